"""Tars, one way each: streams from outside read within bounds (``tarreader``),
decompressed by their magic (``compression``) and extracted without leaving a root
(``extract``, docs/security.md); directories written as deterministic PAX tars
(``writer``)."""
