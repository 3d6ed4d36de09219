"""mosaic_edge.train"""
