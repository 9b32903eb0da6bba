"""Collection: scripted-expert demonstrations rendered into a LeRobotDataset."""
