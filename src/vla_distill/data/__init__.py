"""LeRobotDataset v3.0 (and v2.1 read) on pyarrow + PyAV."""
