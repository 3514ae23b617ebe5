"""Files in and out of a notebook: PUT/GET/DELETE .../files/<path>, listings, ranges, caps, attacks."""

from __future__ import annotations

import hashlib
import http.client
import os
import threading
import urllib.parse

import pytest

from taskkernel.client import ApiError

pytestmark = pytest.mark.timeout(120)


def raw_request(api_url: str, method: str, path: str, body: bytes | None = None,
                headers: dict | None = None) -> tuple[int, dict, bytes]:
    """One request with the path sent exactly as given (no client normalises '..' away)."""
    parsed = urllib.parse.urlsplit(api_url)
    conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=60)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def value(cell: dict) -> str:
    assert cell["status"] == "ok", cell.get("error")
    return next(o["data"]["text/plain"] for o in cell["outputs"] if o["output_type"] == "execute_result")


# --- round trips ------------------------------------------------------------------------------------

def test_a_small_text_file_goes_in_and_comes_out_the_same(notebook, tmp_path):
    local = tmp_path / "notes.txt"
    local.write_text("héllo\nwörld\n", encoding="utf-8")
    assert notebook.upload(local, "notes.txt") == {"path": "notes.txt", "size": local.stat().st_size}
    back = tmp_path / "back.txt"
    assert notebook.download("notes.txt", back) == local.stat().st_size
    assert back.read_bytes() == local.read_bytes()


def test_binary_bytes_of_every_value_round_trip(notebook):
    data = bytes(range(256)) * 4099
    notebook.write_file("data/blob.bin", data)
    assert notebook.read_file("data/blob.bin") == data


def test_an_empty_file_round_trips(notebook):
    notebook.write_file("empty", b"")
    assert notebook.read_file("empty") == b""
    assert [e["size"] for e in notebook.files() if e["name"] == "empty"] == [0]


@pytest.mark.timeout(300)
def test_a_100_mb_file_round_trips_streamed(notebook, tmp_path):
    local = tmp_path / "big.bin"
    digest = hashlib.sha256()
    with open(local, "wb") as out:
        for i in range(100):
            block = os.urandom(1024 * 1024)
            digest.update(block)
            out.write(block)
    assert notebook.upload(local, "big.bin")["size"] == 100 * 1024 * 1024
    back = tmp_path / "back.bin"
    assert notebook.download("big.bin", back) == 100 * 1024 * 1024
    copied = hashlib.sha256()
    with open(back, "rb") as source:
        while block := source.read(1024 * 1024):
            copied.update(block)
    assert copied.hexdigest() == digest.hexdigest()


def test_a_download_has_its_content_type_and_length(service, notebook):
    notebook.write_file("table.csv", b"a,b\n1,2\n")
    status, headers, body = raw_request(service.api_url, "GET", f"/api/notebooks/{notebook.id}/files/table.csv")
    assert status == 200 and body == b"a,b\n1,2\n"
    assert headers["Content-Type"].startswith("text/csv")
    assert headers["Content-Length"] == "8" and headers["Accept-Ranges"] == "bytes"


def test_range_requests_serve_parts_of_a_file(service, notebook):
    notebook.write_file("digits", b"0123456789")
    url = f"/api/notebooks/{notebook.id}/files/digits"
    status, headers, body = raw_request(service.api_url, "GET", url, headers={"Range": "bytes=2-5"})
    assert (status, body, headers["Content-Range"], headers["Content-Length"]) == (206, b"2345", "bytes 2-5/10", "4")
    assert raw_request(service.api_url, "GET", url, headers={"Range": "bytes=7-"})[2] == b"789"
    assert raw_request(service.api_url, "GET", url, headers={"Range": "bytes=-3"})[2] == b"789"
    status, headers, body = raw_request(service.api_url, "GET", url, headers={"Range": "bytes=10-20"})
    assert status == 416 and headers["Content-Range"] == "bytes */10"


def test_a_multipart_upload_stores_the_file_part(service, notebook):
    boundary = "xyzBOUNDARYxyz"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nignored\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"m.bin\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode() + b"\x00multi\r\npart\xff" + \
        f"\r\n--{boundary}--\r\n".encode()
    status, _, answer = raw_request(service.api_url, "PUT", f"/api/notebooks/{notebook.id}/files/up/m.bin",
                                    body=body, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert status == 201, answer
    assert notebook.read_file("up/m.bin") == b"\x00multi\r\npart\xff"


def test_listings_give_name_type_size_and_mtime(notebook):
    notebook.write_file("a.txt", b"abc")
    notebook.write_file("sub/deeper/b.txt", b"12345")
    root = {e["name"]: e for e in notebook.files()}
    assert root["a.txt"]["type"] == "file" and root["a.txt"]["size"] == 3 and root["a.txt"]["mtime"] > 0
    assert root["sub"]["type"] == "directory"
    assert [(e["name"], e["type"]) for e in notebook.files("sub")] == [("deeper", "directory")]
    assert [(e["name"], e["size"]) for e in notebook.files("sub/deeper")] == [("b.txt", 5)]


def test_delete_removes_files_and_directories(notebook):
    notebook.write_file("gone.txt", b"x")
    notebook.write_file("tree/a/b.txt", b"y")
    notebook.delete_file("gone.txt")
    notebook.delete_file("tree")
    assert {e["name"] for e in notebook.files()}.isdisjoint({"gone.txt", "tree"})
    with pytest.raises(ApiError) as missing:
        notebook.read_file("gone.txt")
    assert (missing.value.status, missing.value.code) == (404, "file_not_found")


def test_a_cell_reads_an_uploaded_file_and_writes_one_the_client_downloads(notebook):
    notebook.write_file("input.csv", b"x\n1\n2\n3\n")
    cell = notebook.evaluate(
        "import csv\n"
        "rows = [int(r['x']) for r in csv.DictReader(open('input.csv'))]\n"
        "open('out/total.txt', 'w').write(str(sum(rows))) if __import__('os').makedirs('out', exist_ok=True) is None "
        "else None\n"
        "sum(rows)")
    assert value(cell) == "6"
    assert notebook.read_file("out/total.txt") == b"6"


def test_concurrent_uploads_to_one_notebook_all_land(notebook):
    blobs = {f"c{i}.bin": os.urandom(300_000 + i) for i in range(6)}
    errors = []

    def put(name, data):
        try:
            notebook.write_file(name, data)
        except Exception as exc:  # reported below, with the others
            errors.append(exc)

    threads = [threading.Thread(target=put, args=item) for item in blobs.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    for name, data in blobs.items():
        assert notebook.read_file(name) == data


def test_files_are_served_while_a_cell_runs(notebook):
    running = notebook.evaluate("import time; time.sleep(5)", wait=False)
    notebook.write_file("during.txt", b"while busy")
    assert notebook.read_file("during.txt") == b"while busy"
    assert notebook.cell(running["id"])["state"] != "done"
