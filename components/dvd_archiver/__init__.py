"""The DVD archiver: turbine channels onto DVDs through a NetDVD device.

``components.dvd_archiver.component`` has the component (``DvdArchiver``),
``layout`` says where frames go on the disc, ``staging`` keeps them safe on
local disk until they are verified on disc.  docs/archive.rst describes the
discs for their readers.
"""
