"""Method-agnostic rendering machinery: cameras and rays, samplers, volume rendering, splatting."""
