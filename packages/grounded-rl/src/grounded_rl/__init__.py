"""grounded-rl: SFT and GRPO for visually grounded reasoning on trace-forge datasets."""

__version__ = "0.1.0"
