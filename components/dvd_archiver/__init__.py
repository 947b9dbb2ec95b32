"""The DVD archiver: turbine channels onto DVDs through a NetDVD device.

``components.dvd_archiver.component`` has the component (``DvdArchiver``),
``burner`` burns, verifies and rolls over the discs in the NetDVD device,
``staging`` keeps frames safe on local disk until they are verified on disc
(``turbine.layout`` says where they go on the disc).  docs/archive.rst describes the
discs for their readers.
"""
