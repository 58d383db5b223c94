"""3.7 Diffusion-model quantization: calibration set (qdiffusion_calib), time-step-dependent
activation ranges (tdq), quantization-noise correction (ptqd), searched group sizes with dynamic
activations (q_dit). All run on the digits-ddpm task; shared pieces live in _common."""
