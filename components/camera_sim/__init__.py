"""An Axis VAPIX camera emulator serving the synthetic test pattern over HTTP."""
