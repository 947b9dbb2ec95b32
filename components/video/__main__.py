"""``python -m components.video --name cam1 --set mode=synthetic --set fps=10``."""

from components.video.component import Video

if __name__ == "__main__":
    Video.main()
