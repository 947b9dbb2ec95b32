"""``python -m components.dvd_archiver --name archiver --set netdvd=127.0.0.1:4444``."""

from components.dvd_archiver.component import DvdArchiver

if __name__ == "__main__":
    DvdArchiver.main()
