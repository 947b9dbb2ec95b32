"""Video sources: synthetic pattern, MJPEG network cameras, JPEG files."""
