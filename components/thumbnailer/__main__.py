"""``python -m components.thumbnailer --name thumbnailer [--set rate=1]``."""

from components.thumbnailer.component import Thumbnailer

if __name__ == "__main__":
    Thumbnailer.main()
