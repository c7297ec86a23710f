"""3DGS-DET: 3D object detection on Gaussian scenes (boundary guidance, box-focused sampling, detector, indoor AP)."""
