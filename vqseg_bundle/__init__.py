"""VQ-Seg semi-supervised medical image segmentation as a MONAI bundle."""

from vqseg_bundle.errors import install_cli_excepthook

# `python -m monai.bundle run ...`: errors of the bundle's own checks end with one clear line (vqseg_bundle.errors)
install_cli_excepthook()
