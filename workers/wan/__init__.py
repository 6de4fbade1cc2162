"""The WAN worker: Wan 2.1 video (and one-frame images), loaded once, with reference frames."""
