"""Thumbnails of video frames."""
