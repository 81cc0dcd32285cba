"""The checksum an OMERO import uses, agreed with the server as its Java importer does.

``ImportLibrary`` offers the algorithms it can compute and lets the server pick its most
preferred one (``ManagedRepository.suggestChecksumAlgorithm``, ordered by the server's
``omero.checksum.supported``; ome/omero-blitz ``ManagedRepositoryI.java``). omerofs
computes the two whose text form is a plain hex digest on both sides (OMERO's
``ChecksumProviderImpl`` formats Guava's hashes as lowercase hex): SHA1-160 — first,
because the ingest transfers compute it anyway — and MD5-128. The CRC/Adler/Murmur
forms (Guava's byte order) are not offered rather than risk a mismatch on every import.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omero.model import ChecksumAlgorithmI
from omero.rtypes import rstring, unwrap

from omerofs.errors import ImportFailed

SHA1 = "SHA1-160"
MD5 = "MD5-128"
_HASHERS: dict[str, Callable[[], Any]] = {SHA1: hashlib.sha1, MD5: hashlib.md5}
OFFERED = (SHA1, MD5)  # in our order of preference; the server's order wins
BLOCK = 4 << 20


def algorithm(name: str) -> Any:
    """An ``omero.model.ChecksumAlgorithm`` naming ``name`` (unloaded enum by value)."""
    ca = ChecksumAlgorithmI()
    ca.setValue(rstring(name))
    return ca


def negotiate(repo: Any) -> str:
    """The algorithm the server prefers among those omerofs computes."""
    chosen = repo.suggestChecksumAlgorithm([algorithm(n) for n in OFFERED])
    if chosen is None:
        raise ImportFailed(
            f"the OMERO server accepts none of the checksums omerofs computes "
            f"({', '.join(OFFERED)}); add one to omero.checksum.supported"
        )
    name = str(unwrap(chosen.getValue()))
    if name not in _HASHERS:  # a server answering outside the offer: refuse, do not guess
        raise ImportFailed(f"the OMERO server chose checksum {name!r}, which was not offered")
    return name


def hasher(name: str) -> Any:
    return _HASHERS[name]()


def file_digest(path: Path, name: str) -> str:
    """The ``name`` digest of a file, in OMERO's text form."""
    digest = hasher(name)
    with open(path, "rb", buffering=0) as f:
        while block := f.read(BLOCK):
            digest.update(block)
    return digest.hexdigest()
