"""Training: the one gradient-descent loop (loop), clean runs written to run directories
(clean, rundir), and adversarial training from the clean weights (adversarial), also to a
plateau and through a low-rank update W_clean + U V^T (lowrank)."""
