"""``python -m components.daq --name rig --set rate=500 --set channels=4``."""

from components.daq.component import Daq

if __name__ == "__main__":
    Daq.main()
