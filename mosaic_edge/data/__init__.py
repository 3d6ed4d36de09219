"""Data layer: readers (BigEarthNet v2, SEN12MS), the synthetic benchmark, and shared preprocessing."""
