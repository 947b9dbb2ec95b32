"""``python -m components.ntcp_translator --name rig --set control=HOST:PORT``."""

from . import NtcpTranslator

if __name__ == "__main__":
    NtcpTranslator.main()
