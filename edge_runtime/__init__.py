"""mosaic_edge.edge_runtime"""
