"""mosaic_edge.calibration"""
