"""Comms and widgets (issue 14, item 2): ipywidgets, interact, Output and tqdm.notebook on an engine.

Engine -> feed: comm_open / comm_msg / comm_close with Jupyter's content and base64 buffers.
Feed -> engine: POST /api/notebooks/<id>/comms delivers a front end's comm messages, even while
a cell runs, and GET .../comms is comm_info. All against real sandboxed engines and workers.
"""

import threading
import time

import pytest
from tests.conftest import run_followed as run

pytestmark = pytest.mark.timeout(180)


def of_type(feed: list[dict], msg_type: str) -> list[dict]:
    return [m for m in feed if m["header"]["msg_type"] == msg_type]


def widget_open(feed: list[dict], model: str) -> dict:
    """The comm_open of the first widget model `model` (say IntSliderModel) in `feed`."""
    for msg in of_type(feed, "comm_open"):
        state = msg["content"]["data"].get("state", {})
        if state.get("_model_name") == model:
            return msg
    raise AssertionError(f"no comm_open of a {model} in {[m['content'] for m in of_type(feed, 'comm_open')]}")


def update(nb, comm_id: str, **state) -> str:
    """What a front end sends when the user moves a widget: a comm_msg `update`."""
    return nb.comm_msg(comm_id, {"method": "update", "state": state, "buffer_paths": []})


def test_a_slider_opens_a_comm_with_its_state_on_the_feed(ipython_notebook):
    nb = ipython_notebook
    cell, feed = run(nb, "import ipywidgets as w\nslider = w.IntSlider(value=3, min=0, max=10)\nslider")
    assert cell["status"] == "ok", cell
    opened = widget_open(feed, "IntSliderModel")
    content = opened["content"]
    assert content["target_name"] == "jupyter.widget"
    assert opened["metadata"]["version"].split(".")[0] == "2"  # the widget protocol a front end checks
    assert content["data"]["state"]["value"] == 3
    assert content["data"]["state"]["max"] == 10
    assert opened["parent_header"]["msg_id"] == cell["id"]
    # the cell's value is the widget view, whose model is that comm
    results = of_type(feed, "execute_result")
    assert results[0]["content"]["data"]["application/vnd.jupyter.widget-view+json"]["model_id"] \
        == content["comm_id"]
    assert nb.comm_info("jupyter.widget")["comms"][content["comm_id"]] == {"target_name": "jupyter.widget"}
    assert content["comm_id"] not in nb.comm_info("some.other.target")["comms"]


def test_an_update_over_http_changes_the_value_a_later_cell_sees(any_notebook):
    nb = any_notebook
    _, feed = run(nb, "import ipywidgets as w\nslider = w.IntSlider(value=1)\nseen = []\n"
                      "slider.observe(lambda change: seen.append(change['new']), 'value')")
    comm_id = widget_open(feed, "IntSliderModel")["content"]["comm_id"]
    msg_id = update(nb, comm_id, value=7)
    assert len(msg_id) > 0
    cell, _ = run(nb, "print(slider.value, seen)")
    assert cell["stdout"] == "7 [7]\n"


def test_a_running_loop_sees_the_slider_move(any_notebook):
    nb = any_notebook
    _, feed = run(nb, "import ipywidgets as w\nslider = w.IntSlider(value=0)")
    comm_id = widget_open(feed, "IntSliderModel")["content"]["comm_id"]
    loop = nb.evaluate("import time\nstarted = time.monotonic()\nprint('looping', flush=True)\n"
                       "while slider.value != 42 and time.monotonic() - started < 60:\n    time.sleep(0.01)\n"
                       "print('saw', slider.value)", wait=False)
    for message in nb.follow(loop["id"], timeout=60):  # the loop is running
        if message["header"]["msg_type"] == "stream":
            break
    update(nb, comm_id, value=42)
    done = nb.wait(loop["id"], timeout=70)
    assert done["status"] == "ok", done
    assert done["stdout"] == "looping\nsaw 42\n"


def test_comm_messages_from_the_kernel_carry_binary_buffers(any_notebook):
    nb = any_notebook
    cell, feed = run(nb, "from comm import create_comm\n"
                         "c = create_comm(target_name='probe', data={'hello': 1}, buffers=[b'\\x00\\x01raw'])\n"
                         "c.send({'n': 2}, buffers=[memoryview(b'\\xffmore')])\nc.close({'bye': True})")
    assert cell["status"] == "ok", cell
    opened, sent, closed = of_type(feed, "comm_open"), of_type(feed, "comm_msg"), of_type(feed, "comm_close")
    import base64
    assert opened[0]["content"]["target_name"] == "probe" and opened[0]["content"]["data"] == {"hello": 1}
    assert [base64.b64decode(b) for b in opened[0]["buffers"]] == [b"\x00\x01raw"]
    assert sent[0]["content"]["data"] == {"n": 2}
    assert [base64.b64decode(b) for b in sent[0]["buffers"]] == [b"\xffmore"]
    assert closed[0]["content"] == {"comm_id": opened[0]["content"]["comm_id"], "data": {"bye": True}}
    assert "buffers" not in closed[0]
    assert nb.comm_info("probe")["comms"] == {}


def test_a_front_end_opens_a_comm_and_its_buffers_reach_the_target(any_notebook):
    nb = any_notebook
    run(nb, "import comm\ngot = []\n"
            "def target(c, msg):\n    got.append((msg['content']['data'], [bytes(b) for b in msg['buffers']]))\n"
            "    c.on_msg(lambda m: got.append(m['content']['data']))\n"
            "comm.get_comm_manager().register_target('echo', target)")
    nb.send_comm("comm_open", {"comm_id": "c" * 32, "target_name": "echo", "data": {"x": 1}}, buffers=[b"\x01\x02"])
    assert nb.comm_info("echo")["comms"] == {"c" * 32: {"target_name": "echo"}}
    nb.send_comm("comm_msg", {"comm_id": "c" * 32, "data": {"y": 2}})
    nb.send_comm("comm_close", {"comm_id": "c" * 32, "data": {}})
    cell, _ = run(nb, "print(got)")
    assert cell["stdout"] == "[({'x': 1}, [b'\\x01\\x02']), {'y': 2}]\n"
    assert nb.comm_info()["comms"].get("c" * 32) is None


def test_the_output_widget_captures_what_is_printed_inside_it(any_notebook):
    nb = any_notebook
    cell, feed = run(nb, "import ipywidgets as w\nout = w.Output()\nwith out:\n    print('inside')\nprint('outside')")
    assert cell["status"] == "ok", cell
    out_id = widget_open(feed, "OutputModel")["content"]["comm_id"]
    # as on ipykernel: the widget's msg_id is set to the cell's request while the block runs, so
    # a front end routes the output printed there into the widget, then cleared
    msg_ids = [m["content"]["data"]["state"]["msg_id"] for m in of_type(feed, "comm_msg")
               if m["content"]["comm_id"] == out_id and "msg_id" in m["content"]["data"].get("state", {})]
    assert msg_ids == [cell["id"], ""]
    order = [(m["header"]["msg_type"], m["content"].get("text") or m["content"].get("data", {}).get("state"))
             for m in feed if m["header"]["msg_type"] in ("stream", "comm_msg")]
    assert order.index(("stream", "inside\n")) < order.index(("comm_msg", {"msg_id": ""}))


def test_interact_reruns_its_function_when_the_front_end_moves_its_slider(any_notebook):
    nb = any_notebook
    cell, feed = run(nb, "from ipywidgets import interact\n"
                         "@interact(x=(0, 10))\ndef square(x=2):\n    print('square', x * x)")
    assert cell["status"] == "ok", cell
    slider = widget_open(feed, "IntSliderModel")["content"]["comm_id"]
    output = widget_open(feed, "OutputModel")["content"]["comm_id"]
    assert ("square 4\n") in "".join(m["content"]["text"] for m in of_type(feed, "stream"))
    after = feed[-1]["position"]
    msg_id = update(nb, slider, value=5)
    # the callback's output and its Output widget's msg_id belong to the comm message, as on ipykernel
    seen, deadline = [], time.monotonic() + 30
    for message in nb.feed(after=after, timeout=30):
        if message["parent_header"].get("msg_id") == msg_id:
            seen.append(message)
            if message["header"]["msg_type"] == "stream":
                break
        assert time.monotonic() < deadline
    streams = of_type(seen, "stream")
    assert streams and streams[0]["content"]["text"] == "square 25\n"
    assert streams[0]["parent_header"]["msg_type"] == "comm_msg"
    assert any(m["content"]["comm_id"] == output and m["content"]["data"].get("state", {}).get("msg_id") == msg_id
               for m in of_type(seen, "comm_msg"))


def test_tqdm_notebook_draws_its_bar_as_a_widget(any_notebook):
    nb = any_notebook
    cell, feed = run(nb, "from tqdm.notebook import tqdm\nfor i in tqdm(range(5), desc='work'):\n    pass")
    assert cell["status"] == "ok", cell
    bar = widget_open(feed, "FloatProgressModel")
    assert bar["content"]["data"]["state"]["max"] == 5
    values = [m["content"]["data"]["state"]["value"] for m in of_type(feed, "comm_msg")
              if m["content"]["comm_id"] == bar["content"]["comm_id"]
              and "value" in m["content"]["data"].get("state", {})]
    assert values and values[-1] == 5


def test_tqdm_auto_picks_the_notebook_bar(ipython_notebook):
    nb = ipython_notebook
    cell, _ = run(nb, "from tqdm.auto import tqdm as auto_bar\nfrom tqdm.notebook import tqdm as notebook_bar\n"
                      "print(issubclass(auto_bar, notebook_bar), 'IPKernelApp' in get_ipython().config,\n"
                      "      get_ipython().kernel is get_ipython().kernel)")
    assert cell["stdout"] == "True True True\n", cell


def test_comms_refuse_what_is_not_a_comm_message(ipython_notebook):
    from taskkernel.client import ApiError

    nb = ipython_notebook
    for body, field in [({"msg_type": "execute_request", "content": {"comm_id": "x"}}, "msg_type"),
                        ({"msg_type": "comm_msg", "content": {}}, "content"),
                        ({"msg_type": "comm_open", "content": {"comm_id": "x"}}, "content"),
                        ({"msg_type": "comm_msg", "content": {"comm_id": "x"}, "buffers": ["not base64!"]},
                         "buffers")]:
        with pytest.raises(ApiError) as caught:
            nb.client.request("POST", f"/notebooks/{nb.id}/comms", body)
        assert (caught.value.status, caught.value.code, caught.value.details.get("field")) == \
            (400, "invalid_field", field), body


def test_every_comm_message_conforms_to_the_wire_format(ipython_notebook):
    from taskkernel import messages

    nb = ipython_notebook
    _, feed = run(nb, "from ipywidgets import interact\n@interact(x=(0, 10))\ndef show(x=1):\n    print(x)")
    slider = widget_open(feed, "IntSliderModel")["content"]["comm_id"]
    update(nb, slider, value=3)
    run(nb, "from comm import create_comm\ncreate_comm(target_name='t', buffers=[b'1']).close()")
    everything = list(nb.feed(timeout=1))
    assert {"comm_open", "comm_msg", "comm_close"} <= {m["header"]["msg_type"] for m in everything}
    assert any(m["parent_header"].get("msg_type") == "comm_msg" for m in everything)
    for msg in everything:
        assert messages.validate_message(msg) == [], msg


def test_a_slow_widget_callback_delays_no_cell_and_no_completion(ipython_notebook):
    """A callback still running (it waits for a file a later cell writes) holds up neither a cell
    nor a completion: ordering, not a clock, shows it."""
    nb = ipython_notebook
    _, feed = run(nb, "import ipywidgets as w, os, time\nslider = w.IntSlider()\ncallback = {'done': False}\n"
                      "def slow(change):\n"
                      "    deadline = time.monotonic() + 60\n"
                      "    while not os.path.exists('release') and time.monotonic() < deadline:\n"
                      "        time.sleep(0.02)\n"
                      "    callback['done'] = True\n"
                      "slider.observe(slow, 'value')")
    comm_id = widget_open(feed, "IntSliderModel")["content"]["comm_id"]
    mover = threading.Thread(target=update, args=(nb, comm_id), kwargs={"value": 9}, daemon=True)
    mover.start()
    deadline = time.monotonic() + 30
    while nb.evaluate("slider.value")["outputs"][0]["data"]["text/plain"] != "9":  # the callback has begun
        assert time.monotonic() < deadline, "the comm message never reached the widget"
        time.sleep(0.05)
    assert nb.evaluate("callback['done']")["outputs"][0]["data"]["text/plain"] == "False"
    assert "slider" in nb.complete("sli")["matches"]
    assert nb.evaluate("callback['done']")["outputs"][0]["data"]["text/plain"] == "False"
    run(nb, "open('release', 'w').close()")
    mover.join(30)
    assert not mover.is_alive()
    assert run(nb, "print(callback['done'], slider.value)")[0]["stdout"] == "True 9\n"
