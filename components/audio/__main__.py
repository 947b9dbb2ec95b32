"""``python -m components.audio --name mic --set source=tone --set frequency=440``."""

from components.audio.component import Audio

if __name__ == "__main__":
    Audio.main()
