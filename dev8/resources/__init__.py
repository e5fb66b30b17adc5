"""Resource use: the sampler actor, and the cgroup files it reads."""
