"""The DAQ component: N channels of generated signals, or a CSV recording replayed.

The component class is :class:`components.daq.component.Daq` (also
``components.daq.component.COMPONENT``, which is where the MCP looks);
the signals, the sample clock and the CSV reader are in
:mod:`components.daq.signals`.  Run with ``python -m components.daq --name rig``.
"""
