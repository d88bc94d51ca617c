"""unif2ace.checksum.file_sha256: shard verification reads afresh; weight files may be cached.

    pytest -q tests/test_checksum.py
"""
import os

from unif2ace.checksum import file_sha256

ABC = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"  # FIPS 180-2 test vector
ABD = "a52d159f262b2c6ddb724a61840befc36eb30c88877a4030b65cbe86298449c9"  # sha256(b"abd")


def test_fresh_reads_see_corruption_that_keeps_size_and_mtime(tmp_path):
    p = tmp_path / "w.bin"
    p.write_bytes(b"abc")
    assert file_sha256(p) == ABC and file_sha256(p, cached=True) == ABC
    st = os.stat(p)
    p.write_bytes(b"abd")  # bit rot: same size, and the mtime put back
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert file_sha256(p) == ABD            # what shard verification uses
    assert file_sha256(p, cached=True) == ABC  # the cache is keyed on (path, size, mtime) only
    p.write_bytes(b"abcd")                  # a real rewrite changes the size: hashed again
    assert file_sha256(p, cached=True) == file_sha256(p) != ABC
