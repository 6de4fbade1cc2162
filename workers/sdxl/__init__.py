"""The SDXL worker: text-to-image and image-to-image on one copy of the weights."""
