"""Student training: pure losses, the loop, lerobot-layout checkpoints."""
