"""Files in and out of a notebook: PUT/GET/DELETE .../files/<path>, listings, ranges, caps, attacks."""

from __future__ import annotations

import hashlib
import http.client
import os
import threading
import urllib.parse

import pytest

from taskkernel.client import ApiError
from tests.test_web_console import browser, open_console  # noqa: F401  (the headless Chromium fixture)

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


def test_multipart_uploads_past_64_kib_and_a_part_without_a_filename_land(service, notebook):
    # werkzeug's decoder refused every chunk larger than its form-memory limit (a 413 for any
    # multipart file over 64 KiB); curl -F file=<local sends a part named "file" with no filename
    boundary = "b0undary"
    data = os.urandom(3 * 1024 * 1024 + 17)
    for disposition in ('name="upload"; filename="big.bin"', 'name="file"'):
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\n".encode() + b"n" * 300_000
                + f"\r\n--{boundary}\r\nContent-Disposition: form-data; {disposition}\r\n\r\n".encode()
                + data + f"\r\n--{boundary}--\r\n".encode())
        status, _, answer = raw_request(service.api_url, "PUT", f"/api/notebooks/{notebook.id}/files/mp.bin",
                                        body=body, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        assert (status, answer) == (201, b'{"path":"mp.bin","size":%d}\n' % len(data)), disposition
        assert notebook.read_file("mp.bin") == data
    status, _, answer = raw_request(service.api_url, "PUT", f"/api/notebooks/{notebook.id}/files/none.bin",
                                    body=f"--{boundary}\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\n"
                                         f"x\r\n--{boundary}--\r\n".encode(),
                                    headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert status == 400 and b"no file part" in answer


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


# --- whatever a cell plants in its directory, the API never leaves it -------------------------------

def host_directory(service, notebook) -> str:
    """The notebook's directory as the host sees it (where its worker's sandbox binds HOME from)."""
    import glob

    worker = notebook.refresh()["worker"]["id"]
    found = glob.glob(f"/tmp/taskkernel-*/{worker}/home")
    assert len(found) == 1, found
    return found[0]


def refused(call, status: int, code: str) -> None:
    with pytest.raises(ApiError) as caught:
        call()
    assert (caught.value.status, caught.value.code) == (status, code), caught.value


def test_a_symlink_to_etc_shadow_is_not_followed(notebook):
    value(notebook.evaluate("import os; os.symlink('/etc/shadow', 'shadow'); os.symlink('/etc', 'etc'); 1"))
    refused(lambda: notebook.read_file("shadow"), 400, "unsafe_path")
    refused(lambda: notebook.read_file("etc/passwd"), 400, "unsafe_path")
    refused(lambda: notebook.files("etc"), 400, "unsafe_path")
    refused(lambda: notebook.write_file("etc/planted", b"x"), 400, "unsafe_path")
    assert not os.path.exists("/etc/planted")
    listed = {e["name"]: e["type"] for e in notebook.files()}
    assert listed["shadow"] == "symlink" and listed["etc"] == "symlink"


def test_a_symlink_into_another_notebooks_directory_is_not_followed(service, client, notebook):
    with client.start("python") as other:
        other.write_file("secret.txt", b"not yours")
        target = host_directory(service, other)
        value(notebook.evaluate(f"import os; os.symlink({target!r}, 'other'); "
                                f"os.symlink({target + '/secret.txt'!r}, 'secret'); 1"))
        refused(lambda: notebook.read_file("other/secret.txt"), 400, "unsafe_path")
        refused(lambda: notebook.read_file("secret"), 400, "unsafe_path")
        refused(lambda: notebook.files("other"), 400, "unsafe_path")
        refused(lambda: notebook.write_file("other/secret.txt", b"overwritten"), 400, "unsafe_path")
        refused(lambda: notebook.delete_file("other/secret.txt"), 400, "unsafe_path")
        assert other.read_file("secret.txt") == b"not yours"


@pytest.mark.parametrize("path", ["../../etc/passwd", "%2e%2e/%2e%2e/etc/passwd", "a/../../../etc/passwd",
                                  "./x", "%2Fetc%2Fpasswd", "a//b", "a/./b"])
def test_dot_dot_absolute_and_odd_paths_are_refused(service, notebook, path):
    notebook.write_file("a/b", b"inside")
    for method in ("GET", "PUT", "DELETE"):
        status, _, body = raw_request(service.api_url, method, f"/api/notebooks/{notebook.id}/files/{path}",
                                      body=b"x" if method == "PUT" else None)
        assert status in (400, 404), (method, path, status, body)
        assert b"root:" not in body
        if status == 400:
            assert b'"invalid_path"' in body, body
    assert notebook.read_file("a/b") == b"inside"


def test_a_fifo_and_a_socket_are_listed_but_never_opened(notebook):
    value(notebook.evaluate("import os, socket; os.mkfifo('pipe'); s = socket.socket(socket.AF_UNIX); "
                            "s.bind('sock'); 1"))
    refused(lambda: notebook.read_file("pipe"), 400, "unsafe_path")  # opening it would block forever
    refused(lambda: notebook.read_file("sock"), 400, "unsafe_path")
    refused(lambda: notebook.write_file("pipe/x", b"x"), 400, "not_a_directory")
    assert {e["name"]: e["type"] for e in notebook.files()}.items() >= {"pipe": "other", "sock": "other"}.items()


@pytest.mark.skipif(os.geteuid() != 0, reason="making a device node needs root")
def test_a_device_node_in_the_directory_is_never_opened(service, notebook):
    import stat

    os.mknod(os.path.join(host_directory(service, notebook), "zero"), 0o666 | stat.S_IFCHR, os.makedev(1, 5))
    refused(lambda: notebook.read_file("zero"), 400, "unsafe_path")  # /dev/zero would stream forever


@pytest.mark.skipif(os.geteuid() != 0, reason="the engine has a uid of its own only when the service runs as root")
def test_file_operations_run_as_the_engines_user_not_the_services(notebook):
    notebook.write_file("mine.txt", b"x")
    assert value(notebook.evaluate("import os; os.stat('mine.txt').st_uid == os.getuid() != 0")) == "True"
    value(notebook.evaluate("open('locked', 'w').write('secret'); import os; os.chmod('locked', 0); 1"))
    # root could read it; the engine's user cannot, so neither can the API
    refused(lambda: notebook.read_file("locked"), 400, "unsafe_path")


def test_a_directory_is_not_downloaded_and_a_file_is_not_listed(notebook):
    notebook.write_file("d/f", b"x")
    refused(lambda: notebook.read_file("d"), 400, "is_a_directory")
    refused(lambda: notebook.files("d/f"), 400, "not_a_directory")
    refused(lambda: notebook.write_file("d", b"x"), 400, "is_a_directory")
    refused(lambda: notebook.read_file("missing"), 404, "file_not_found")


# --- caps -----------------------------------------------------------------------------------------------

@pytest.fixture
def capped(private_service):
    """A service whose files are capped at 100,000 bytes each and 250,000 per notebook."""
    caps = {"max_file_bytes": 100_000, "max_notebook_files_bytes": 250_000}
    private_service.start_supervisor("capped", pool=1, **caps)
    private_service.start_api(**caps)
    with private_service.client().start("python") as nb:
        yield private_service, nb


def test_a_file_over_the_per_file_cap_is_refused_with_413(capped):
    service, notebook = capped
    notebook.write_file("fits", b"x" * 100_000)
    refused(lambda: notebook.write_file("too_big", b"x" * 100_001), 413, "file_too_large")

    def chunked():  # no Content-Length: the cap is enforced while the body streams
        for _ in range(11):
            yield b"y" * 10_000

    status, _, body = raw_request(service.api_url, "PUT", f"/api/notebooks/{notebook.id}/files/streamed",
                                  body=chunked())  # http.client sends it chunked
    assert (status, b'"file_too_large"' in body) == (413, True), body
    assert sorted(e["name"] for e in notebook.files()) == ["fits"]  # nothing half-written is left


def test_the_notebooks_files_are_capped_in_total(capped):
    _, notebook = capped
    notebook.write_file("one", b"1" * 100_000)
    notebook.write_file("two", b"2" * 100_000)
    refused(lambda: notebook.write_file("three", b"3" * 60_000), 413, "notebook_storage_full")
    notebook.delete_file("one")
    notebook.write_file("three", b"3" * 60_000)
    assert sorted(e["name"] for e in notebook.files()) == ["three", "two"]
    # a cell's writes are not capped (its rlimit is), but a checkpoint's files are
    value(notebook.evaluate("open('four', 'wb').write(b'4' * 100_000); v = 1; 1"))
    refused(lambda: notebook.checkpoint(include_files=True), 413, "notebook_storage_full")
    refused(lambda: notebook.restore(), 404, "no_checkpoint")  # nothing was taken, not even the namespace


def test_concurrent_uploads_never_take_the_notebook_past_its_cap(capped):
    # eight uploads of 90,000 bytes at once against 250,000 in all, each sending its first third,
    # then waiting until all have, then the rest: each reserves its bytes before writing them
    # (half of them chunked, of unknown length, reserving as they go), so at most two land
    service, notebook = capped
    started, results = threading.Barrier(8), []

    def put(i: int) -> None:
        data = bytes([i]) * 90_000

        def body():
            yield data[:30_000]
            try:
                started.wait(5)
            except threading.BrokenBarrierError:
                pass
            yield data[30_000:]

        headers = {"Content-Length": str(len(data))} if i % 2 else {}  # without one it goes chunked
        results.append((i, *raw_request(service.api_url, "PUT", f"/api/notebooks/{notebook.id}/files/c{i}",
                                        body=body(), headers=headers)[::2]))

    threads = [threading.Thread(target=put, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    landed = {e["name"]: e["size"] for e in notebook.files()}
    assert 1 <= len(landed) <= 2 and sum(landed.values()) <= 250_000, (landed, results)
    assert sorted(f"c{i}" for i, status, _ in results if status == 201) == sorted(landed)
    assert all(b'"notebook_storage_full"' in body for _, status, body in results if status != 201), results
    assert len(results) == 8
    for name in landed:  # what the refused ones reserved was given back: the whole cap is free again
        notebook.delete_file(name)
    notebook.write_file("a", b"a" * 100_000)
    notebook.write_file("b", b"b" * 100_000)
    refused(lambda: notebook.write_file("c", b"c" * 50_001), 413, "notebook_storage_full")


# --- the files go with the notebook --------------------------------------------------------------------

def test_files_survive_a_restart_which_resets_only_the_namespace(service, notebook):
    notebook.write_file("kept/data.bin", b"still here")
    value(notebook.evaluate("x = 1; open('from_cell.txt', 'w').write('cell'); 1"))
    before = notebook.refresh()["worker"]["id"]
    notebook.restart()
    assert notebook.refresh()["worker"]["id"] != before
    assert notebook.record["files_lost"] is None  # the same host: nothing was left behind
    # the very first cell after the restart already sees them, with the new engine's ownership
    cell = notebook.evaluate("import os; (open('kept/data.bin').read(), open('from_cell.txt').read(), "
                             "os.stat('kept').st_uid == os.getuid(), 'x' in dir())")
    assert value(cell) == "('still here', 'cell', True, False)"
    assert notebook.read_file("kept/data.bin") == b"still here"
    value(notebook.evaluate("open('kept/new.txt', 'w').write('written after'); 1"))  # and may write there
    assert notebook.read_file("kept/new.txt") == b"written after"


def checkpoint_files(notebook) -> str:
    """Where the notebook's checkpoint keeps its files on this host (checkpoints in Redis)."""
    import glob

    found = glob.glob(f"/tmp/taskkernel-*/.checkpoints/{notebook.id}.files.tar")
    assert len(found) == 1, found
    return found[0]


def test_a_checkpoint_with_files_is_restored_with_them_and_never_archives_a_planted_link(service, client):
    import tarfile

    from tests.conftest import wait_for

    nb = client.start("python")
    try:
        value(nb.evaluate("import os; os.makedirs('d/e', exist_ok=True); open('d/kept.txt', 'w').write('original'); "
                          "open('gone.txt', 'w').write('x'); os.symlink('/etc/shadow', 'shadow'); os.mkfifo('pipe'); "
                          "open('locked', 'w').write('s'); os.chmod('locked', 0); n = 1; 1"))
        report = nb.checkpoint(include_files=True)
        # archived as the engine's user: root could read the mode-0 file, the engine's user cannot
        skipped = ["locked", "pipe", "shadow"] if os.geteuid() == 0 else ["pipe", "shadow"]
        assert {"entries": report["files"]["entries"], "skipped": sorted(report["files"]["skipped"])} == \
            {"entries": 4 + (os.geteuid() != 0), "skipped": skipped}, report  # d, d/e, d/kept.txt, gone.txt
        with tarfile.open(checkpoint_files(nb)) as archive:  # the link is not in it, nor what it points to
            assert {m.name: m.type for m in archive.getmembers()}.get("shadow") is None
            assert all(m.isreg() or m.isdir() for m in archive.getmembers())
            assert archive.extractfile("d/kept.txt").read() == b"original"
        value(nb.evaluate("open('d/kept.txt', 'w').write('changed'); os.remove('gone.txt'); "
                          "open('new.txt', 'w').write('new'); n = 2; 1"))
        check = "(open('d/kept.txt').read(), os.path.exists('gone.txt'), os.path.exists('new.txt'), n)"
        assert nb.restore()["files"] is None  # without include_files: the namespace only
        assert value(nb.evaluate(check)) == "('changed', False, True, 1)"
        value(nb.evaluate("n = 3; 1"))
        restored = nb.restore(include_files=True)  # the directory's contents are replaced
        assert restored["files"]["entries"] == report["files"]["entries"]
        assert value(nb.evaluate(check)) == "('original', True, False, 1)"
        assert value(nb.evaluate("(os.path.lexists('shadow'), os.path.isdir('d/e'))")) == "(False, True)"
        assert nb.read_file("gone.txt") == b"x"
        archive_path = checkpoint_files(nb)
    finally:
        nb.close()
    wait_for(lambda: not os.path.exists(archive_path), 15, "the checkpoint's files to go with the notebook")


def test_files_are_deleted_with_the_notebook(service, client):
    from tests.conftest import wait_for

    nb = client.start("python")
    nb.write_file("doomed.txt", b"bye")
    directory = host_directory(service, nb)
    nb.close()
    wait_for(lambda: not os.path.exists(directory), 15, "the notebook's directory to be removed")
    refused(lambda: nb.read_file("doomed.txt"), 404, "notebook_not_found")


# --- the command line -------------------------------------------------------------------------------------

def test_taskkernel_cp_copies_into_and_out_of_a_notebook(service, notebook, tmp_path):
    import subprocess
    import sys

    def cp(*args):
        return subprocess.run([sys.executable, "-m", "taskkernel", "cp", "--url", service.api_url, *args],
                              capture_output=True, text=True, timeout=60)

    local = tmp_path / "report.csv"
    local.write_bytes(b"id,value\n1,\xe2\x82\xac\n")
    sent = cp(str(local), f"{notebook.id}:inbox/")
    assert sent.returncode == 0, sent.stderr
    assert notebook.read_file("inbox/report.csv") == local.read_bytes()
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    fetched = cp(f"{notebook.id}:inbox/report.csv", str(out_dir))
    assert fetched.returncode == 0, fetched.stderr
    assert (out_dir / "report.csv").read_bytes() == local.read_bytes()
    missing = cp(f"{notebook.id}:nothing.txt", str(out_dir))
    assert missing.returncode == 2 and "no such file" in missing.stderr
    assert not (out_dir / "nothing.txt").exists()
    both_local = cp(str(local), str(out_dir))
    assert both_local.returncode == 2 and "exactly one" in both_local.stderr


# --- the web console -----------------------------------------------------------------------------------

def test_the_console_uploads_dropped_files_and_links_the_notebooks_files(service, notebook, browser):  # noqa: F811
    from selenium.webdriver.common.by import By

    page, wait = open_console(browser, f"{service.api_url}/#{notebook.id}")
    wait.until(lambda b: page(By.ID, "files").is_displayed())
    # a drop of a file from the desktop, as the browser delivers it to the page
    browser.execute_script("""
        const transfer = new DataTransfer();
        transfer.items.add(new File([new Uint8Array([0, 1, 2, 255])], "dropped.bin"));
        document.getElementById("drop-zone").dispatchEvent(
            new DragEvent("drop", {dataTransfer: transfer, bubbles: true, cancelable: true}));""")
    wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, '#file-list li[data-name="dropped.bin"]'))
    assert notebook.read_file("dropped.bin") == b"\x00\x01\x02\xff"

    value(notebook.evaluate("open('result.txt', 'w').write('from the cell'); 1"))
    # the page refreshes its listing when a cell ends (read fresh each time: the list is re-rendered)
    href, download = wait.until(lambda b: b.execute_script(
        "const a = document.querySelector('#file-list li[data-name=\"result.txt\"] a');"
        "return a && [a.href, a.download];"))
    assert href == f"{service.api_url}/api/notebooks/{notebook.id}/files/result.txt"
    assert download == "result.txt"
    fetched = browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "fetch(arguments[0]).then((r) => r.text()).then(done, (e) => done('failed: ' + e));", href)
    assert fetched == "from the cell"


# --- the Redis path: what an API on another host than the worker uses -----------------------------------

def test_through_redis_files_round_trip_with_ranges_caps_and_refusals(private_service, tmp_path):
    private_service.start_supervisor("far", pool=1, max_file_bytes=30_000_000)
    private_service.start_api(file_transfer="redis", max_file_bytes=30_000_000)
    with private_service.client().start("python") as notebook:
        local = tmp_path / "twenty.bin"
        local.write_bytes(os.urandom(20_000_000))
        assert notebook.upload(local, "deep/twenty.bin")["size"] == 20_000_000
        back = tmp_path / "back.bin"
        assert notebook.download("deep/twenty.bin", back) == 20_000_000
        assert back.read_bytes() == local.read_bytes()
        status, headers, body = raw_request(private_service.api_url, "GET",
                                            f"/api/notebooks/{notebook.id}/files/deep/twenty.bin",
                                            headers={"Range": "bytes=-5"})
        assert (status, body, headers["Content-Range"]) == (206, local.read_bytes()[-5:], "bytes 19999995-19999999/20000000")
        value(notebook.evaluate("import os; os.symlink('/etc/shadow', 'shadow'); 1"))
        refused(lambda: notebook.read_file("shadow"), 400, "unsafe_path")
        refused(lambda: notebook.write_file("big", b"x" * 30_000_001), 413, "file_too_large")
        assert {e["name"] for e in notebook.files()} == {"deep", "shadow"}
        notebook.delete_file("deep")
        refused(lambda: notebook.read_file("deep/twenty.bin"), 404, "file_not_found")


def test_a_notebooks_own_token_reaches_its_files_and_no_other_notebooks(private_service):
    from taskkernel.client import Client

    private_service.start_supervisor("tokens", pool=2)
    private_service.start_api(token="service-secret")
    admin = Client(private_service.api_url, token="service-secret")
    with admin.start("python") as mine, admin.start("python") as theirs:
        theirs.write_file("private.txt", b"theirs")
        own = Client(private_service.api_url, token=mine.record["token"])
        as_owner = own.notebook(mine.id)
        as_owner.write_file("mine.txt", b"mine")
        assert as_owner.read_file("mine.txt") == b"mine"
        assert [e["name"] for e in as_owner.files()] == ["mine.txt"]
        intruder = type(as_owner)(own, {"id": theirs.id})
        refused(lambda: intruder.read_file("private.txt"), 401, "unauthorized")
        refused(lambda: intruder.write_file("planted.txt", b"x"), 401, "unauthorized")
        refused(lambda: Client(private_service.api_url).notebook(mine.id), 401, "unauthorized")


def test_a_refused_uploads_unread_body_is_never_taken_for_the_next_request(service, notebook):
    value(notebook.evaluate("import os; os.symlink('/etc', 'etc'); 1"))
    notebook.write_file("ok.txt", b"next")
    parsed = urllib.parse.urlsplit(service.api_url)
    conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=60)
    try:
        body = os.urandom(300_000)  # bytes the server never reads: they must not be taken for a request
        conn.request("PUT", f"/api/notebooks/{notebook.id}/files/etc/x", body=body)
        refused_response = conn.getresponse()
        assert (refused_response.status, b"unsafe_path" in refused_response.read()) == (400, True)
        # the server may close the connection (HTTP lets it) but never reads the body as a request
        try:
            conn.request("GET", f"/api/notebooks/{notebook.id}/files/ok.txt")
            answer = conn.getresponse()
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            conn.close()
            conn.request("GET", f"/api/notebooks/{notebook.id}/files/ok.txt")
            answer = conn.getresponse()
        assert (answer.status, answer.read()) == (200, b"next")
    finally:
        conn.close()
