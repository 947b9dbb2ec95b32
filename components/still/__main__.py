"""``python -m components.still --name door --set url=http://CAMERA/axis-cgi/jpg/image.cgi``."""

from components.still.component import Still

if __name__ == "__main__":
    Still.main()
