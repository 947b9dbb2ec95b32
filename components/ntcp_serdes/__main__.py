"""``python -m components.ntcp_serdes --name rigSerdes --set translator=rig --set port=6001``."""

from . import NtcpSerdes

if __name__ == "__main__":
    NtcpSerdes.main()
