"""mosaic_edge.export"""
