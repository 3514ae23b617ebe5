"""The wire format: every feed message shape is checked by one validator, which must catch bad ones."""

from taskkernel import messages


def test_a_well_formed_message_passes():
    msg = messages.make_message("stream", {"name": "stdout", "text": "hi"}, notebook_id="nb", cell_id="c1")
    assert messages.validate_message(msg) == []
    assert msg["parent_header"] == {"msg_id": "c1", "msg_type": "execute_request"}


def test_missing_content_keys_and_unknown_types_are_caught():
    msg = messages.make_message("execute_result", {"data": {}}, notebook_id="nb", cell_id="c1")
    assert "execute_result.content.execution_count missing" in messages.validate_message(msg)
    msg = messages.make_message("bogus", {}, notebook_id="nb")
    assert messages.validate_message(msg) == ["unknown msg_type 'bogus'"]
    msg = messages.status("sleepy", notebook_id="nb")
    assert messages.validate_message(msg) == ["bad execution_state 'sleepy'"]


def test_outputs_are_nbformat_outputs():
    msg = messages.make_message("error", {"ename": "E", "evalue": "v", "traceback": ["t"]}, notebook_id="n")
    assert messages.output_from_message(msg) == {"output_type": "error", "ename": "E", "evalue": "v",
                                                 "traceback": ["t"]}
    assert messages.output_from_message(messages.status("busy", notebook_id="n")) is None


def test_cells_round_trip_through_their_redis_hash():
    cell = {"id": "c", "notebook_id": "n", "code": "x", "state": "done", "status": "ok",
            "execution_count": 3, "stdout": "o", "stderr": "", "outputs": [{"output_type": "stream"}],
            "error": None, "stop_on_error": True}
    raw = {k.encode(): v.encode() for k, v in messages.cell_to_redis(cell).items()}
    back = messages.cell_from_redis(raw)
    for key in cell:
        assert back[key] == cell[key], key
