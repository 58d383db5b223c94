"""3.1 Scale and zero-point: quantization parameters chosen by a loss (mse_clip, task_loss_scale)."""
