"""miniworld: an embedded synthetic world (concepts, renderer), a tiny Stable-Diffusion-architecture model
trained on it, and an exact oracle that reads its images."""
