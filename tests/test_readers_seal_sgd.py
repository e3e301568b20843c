"""The Seal-Tools and SGD readers, through the real ingest path: the whole shared releases (../shared/data,
skipped when absent) with the counts measured on them, a known record of each checked field by field, and
bad-input fixtures (missing tool, unknown service, malformed line, ...) quarantined with file, line and reason."""

import json
from collections import Counter
from pathlib import Path

import pytest

from agenttune.traces.ingest import IngestError, SourceSpec, check_required_arguments
from agenttune.traces.readers import sgd
from agenttune.traces.readers.common import check_call_arguments
from test_readers import need_data, run, write_lines


def calls_of(trace: dict) -> list[dict]:
    return [call for message in trace["messages"] for call in message.get("tool_calls") or []]


def assert_calls_fit_their_tools(trace: dict) -> None:
    """Every call names a declared parameter of its tool, of the declared type and in its enum, with every
    required argument: the check the readers make, made again on what ingest wrote."""
    schemas = {tool["name"]: tool["parameters"] for tool in trace["tools"]}
    for message in trace["messages"]:
        for call in message.get("tool_calls") or []:
            check_call_arguments(call, schemas[call["name"]], trace["id"])
    check_required_arguments(trace)


# --- Seal-Tools: the whole shared release -------------------------------------------------------------------------


def test_real_seal_tools(tmp_path):
    folder = need_data("seal_tools")
    stats, traces, quarantine = run(tmp_path, SourceSpec("seal", str(folder), "seal_tools"))
    source = stats["sources"][0]
    # 700 + 700 + 654 queries; 85 hold a nested call, 12 an argument that does not fit its tool (measured).
    assert (source["read"], source["kept"], source["quarantined"], source["deduplicated"]) == (2054, 1957, 97, 0)
    assert source["quarantined_by_kind"] == {"invalid_argument": 12, "nested_call": 85}
    nested_by_file = Counter(Path(e["path"]).stem for e in quarantine if e["kind"] == "nested_call")
    assert nested_by_file == {"dev": 28, "test_in_domain": 30, "test_out_domain": 27}
    assert all(e["unit"] == "line" and e["id"].startswith("seal:") and e["line"] > 0 for e in quarantine)
    invalid = Counter(e["reason"].split(":")[0] for e in quarantine if e["kind"] == "invalid_argument")
    assert invalid == {"invalid argument 'position1' for tool 'calculateCollision'": 5,
                       "invalid argument 'average_purchase_frequency' for tool 'estimateCustomerLifetimeValue'": 5,
                       "invalid argument 'eval_data' for tool 'evaluateNeuralNetwork'": 1,
                       "invalid argument 'patient_id' for tool 'scheduleSurgery'": 1}

    assert sum(len(calls_of(t)) for t in traces) == 5239
    assert len({tool["name"] for t in traces for tool in t["tools"]}) == 2534
    assert Counter(len(calls_of(t)) for t in traces) == {1: 494, 2: 19, 3: 1118, 4: 286, 5: 31, 6: 9}
    coerced = [t["meta"]["coerced_arguments"] for t in traces if "coerced_arguments" in t["meta"]]
    assert (len(coerced), sum(map(len, coerced))) == (107, 131)
    for trace in traces:
        assert trace["meta"]["task"] == "seal_tools" and trace["meta"]["kind"] == "tool"
        assert [m["role"] for m in trace["messages"]] == ["user", "assistant"]  # ends on the calls: no results given
        assert [tool["name"] for tool in trace["tools"]] == list(dict.fromkeys(c["name"] for c in calls_of(trace)))
        assert_calls_fit_their_tools(trace)

    by_id = {t["id"]: t for t in traces}
    easy = by_id["seal:dev-easy-0"]
    assert easy["source"] == "seal"
    assert easy["messages"] == [
        {"role": "user", "content": "Retrieve information about the number of nurses in a specific country."},
        {"role": "assistant", "content": "",
         "tool_calls": [{"name": "getHealthWorkforce", "arguments": {"location": "country", "occupation": "nurses"}}]},
    ]
    assert easy["tools"] == [{
        "name": "getHealthWorkforce",
        "description": "Retrieve information about the health workforce in a specific location",
        "parameters": {"type": "object", "properties": {
            "location": {"type": "string", "description": "The location for which you want to get information about "
                                                          "the health workforce (e.g., country, city)"},
            "occupation": {"type": "string", "description": "Specify a specific occupation within the health "
                                                            "workforce (e.g., doctors, nurses, pharmacists)"}},
            "required": ["location"]},
    }]
    assert easy["meta"] == {"task": "seal_tools", "kind": "tool", "split": "dev", "level": "easy"}
    # "age": "63" for an int parameter: coerced to 63, and listed.
    enrol = by_id["seal:dev-easy-14"]
    assert calls_of(enrol) == [{"name": "enrollYouthParticipant",
                                "arguments": {"program_id": "Y4MkKoaGP", "participant_name": "192.168.143.207",
                                              "age": 63}}]
    assert enrol["tools"][0]["parameters"]["properties"]["age"] == {"type": "integer",
                                                                    "description": "The age of the participant"}
    assert enrol["meta"]["coerced_arguments"] == ["0.age"]
    # Several calls: one assistant message, in the data's order.
    hearing = by_id["seal:dev-difficult-249"]
    assert [c["name"] for c in calls_of(hearing)] == ["searchGeneExpression", "compareSurvivalGroups", "getLabResults"]
    assert hearing["meta"]["level"] == "difficult"

    entries = {e["id"]: e for e in quarantine}
    nested = entries["seal:dev-difficult-300"]
    assert nested["path"] == str(folder / "dev.jsonl") and nested["line"] == 301
    assert nested["field"] == "calling[1].parameters.patient_id"
    assert nested["reason"].startswith("nested call: argument 'patient_id' of getEyeExamData is API_call_0, "
                                       "the output of calling[0] (getDiseaseDiagnosis)")
    collision = entries["seal:dev-difficult-325"]
    assert (collision["kind"], collision["line"], collision["field"]) == (
        "invalid_argument", 326, "calling[1].parameters.position1")
    assert "is array [0, 0, 0], the tool declares number" in collision["reason"]


# --- SGD: the shared dialogues ------------------------------------------------------------------------------------


def test_real_sgd(tmp_path):
    folder = need_data("sgd/train")
    stats, traces, quarantine = run(tmp_path, SourceSpec("sgd", str(folder), "sgd"))
    source = stats["sources"][0]
    assert (source["read"], source["kept"], source["quarantined"], source["deduplicated"]) == (1470, 1470, 0, 0)
    assert quarantine == []
    assert sum(len(calls_of(t)) for t in traces) == 4015
    assert len({s for t in traces for s in t["meta"]["services"]}) == 22
    assert len({tool["name"] for t in traces for tool in t["tools"]}) == 45
    assert sum(t["meta"]["trimmed_results"] for t in traces) == 1418
    rows_kept = Counter()
    for trace in traces:
        assert_calls_fit_their_tools(trace)
        assert trace["meta"]["task"] == "sgd" and trace["messages"][0]["role"] == "user"
        for i, message in enumerate(trace["messages"]):
            if message["role"] == "tool":
                result = json.loads(message["content"])
                assert set(result) == {"count", "results"} and result["count"] >= len(result["results"])
                rows_kept[len(result["results"])] += 1
                assert trace["messages"][i + 1]["role"] == "assistant" and trace["messages"][i + 1]["content"]
    # At most RESULT_ROWS rows, except where the system later offers a later row (two calls, measured).
    assert rows_kept == {0: 58, 1: 2205, 2: 166, 3: 1583, 4: 2, 7: 1}

    by_id = {t["id"]: t for t in traces}
    first = by_id["sgd:1_00000"]
    assert [tool["name"] for tool in first["tools"]] == ["Restaurants_1.ReserveRestaurant",
                                                         "Restaurants_1.FindRestaurants"]
    find = first["tools"][1]
    assert find["description"] == "Find a restaurant of a particular cuisine in a city"
    assert find["parameters"]["required"] == ["cuisine", "city"]
    assert list(find["parameters"]["properties"]) == ["cuisine", "city", "price_range", "has_live_music",
                                                      "serves_alcohol"]
    assert find["parameters"]["properties"]["price_range"] == {
        "type": "string", "description": "Price range for the restaurant",
        "enum": ["inexpensive", "moderate", "expensive", "very expensive"]}  # default "dontcare": no default
    party = first["tools"][0]["parameters"]["properties"]["party_size"]
    assert party["default"] == "2" and party["enum"] == ["1", "2", "3", "4", "5", "6"]
    assert first["messages"][:5] == [
        {"role": "user", "content": "I am feeling hungry so I would like to find a place to eat."},
        {"role": "assistant", "content": "Do you have a specific which you want the eating place to be located at?"},
        {"role": "user", "content": "I would like for it to be in San Jose."},
        {"role": "assistant", "content": "Is there a specific cuisine type you enjoy, such as Mexican, Italian or "
                                         "something else?"},
        {"role": "user", "content": "I usually like eating the American type of food."},
    ]
    assert first["messages"][5] == {"role": "assistant", "content": "", "tool_calls": [
        {"name": "Restaurants_1.FindRestaurants", "arguments": {"city": "San Jose", "cuisine": "American"}}]}
    tool = first["messages"][6]
    result = json.loads(tool["content"])
    assert tool["name"] == "Restaurants_1.FindRestaurants" and result["count"] == 10
    assert [row["restaurant_name"] for row in result["results"]] == ["71 Saint Peter", "Bazille", "Billy Berk's"]
    assert first["messages"][7] == {"role": "assistant",
                                    "content": "I see that at 71 Saint Peter there is a good restaurant which is in "
                                               "San Jose."}
    assert len(first["messages"]) == 30 and first["messages"][-1]["role"] == "assistant"
    assert first["meta"] == {"task": "sgd", "kind": "tool", "services": ["Restaurants_1"], "trimmed_results": 2}
    # A dialogue that offers the seventh result keeps seven rows.
    offered = [json.loads(m["content"]) for m in by_id["sgd:65_00064"]["messages"] if m["role"] == "tool"]
    assert max(len(r["results"]) for r in offered) == 7


# --- Seal-Tools: bad input ----------------------------------------------------------------------------------------

SEAL_TOOLS = [
    {"api_name": "getWeather", "api_description": "Weather for a city", "field": "Travel",
     "parameters": {"city": {"type": "str", "description": "City"},
                    "days": {"type": "int", "description": "Days ahead", "default": 1},
                    "unit": {"type": "str", "description": "Unit", "choices": ["C", "F"]},
                    "speed": {"type": "float", "description": "Wind speed", "unit": "m/s", "example": "2.5"}},
     "required": ["city"], "responses": {"forecast": {"type": "str", "description": "Forecast"}}},
    {"api_name": "bookHotel", "api_description": "Book a hotel", "field": "Travel",
     "parameters": {"city": {"type": "str", "description": "City"}, "guests": {"type": "int", "description": "n"}},
     "required": ["city", "guests"], "responses": {"booking_id": {"type": "str", "description": "Id"}}},
    {"api_name": "oddTool", "api_description": "A tool with a type nobody maps",
     "parameters": {"x": {"type": "complex", "description": "?"}}, "required": [], "responses": {}},
]


def seal_query(qid, *calls, query="Plan my trip."):
    return {"id": qid, "query": query,
            "calling": [{"api": api, "parameters": params, "responses": [f"API_call_{k}"]}
                        for k, (api, params) in enumerate(calls)]}


def seal_folder(tmp_path: Path, queries: list, tools: list = SEAL_TOOLS) -> Path:
    folder = tmp_path / "seal"
    folder.mkdir()
    write_lines(folder / "tool.jsonl", tools)
    write_lines(folder / "field.jsonl", [{"Travel": ["Hotels"]}])  # not a query file
    write_lines(folder / "dev.jsonl", queries)
    return folder


def test_seal_tools_fixture_quarantines_with_file_line_and_reason(tmp_path):
    folder = seal_folder(tmp_path, [
        seal_query("dev-easy-0", ("getWeather", {"city": "Oslo", "days": "3", "unit": "C", "speed": "2"})),  # 1
        seal_query("dev-easy-1", ("getForecast", {"city": "Oslo"})),  # 2: not in tool.jsonl
        '{"id": "dev-easy-2", "query": "x", "calling": [',  # 3: malformed
        seal_query("dev-difficult-3", ("bookHotel", {"city": "Rome", "guests": 2}),
                   ("getWeather", {"city": "API_call_0"})),  # 4: nested
        seal_query("dev-easy-4", ("getWeather", {"city": "Oslo", "unit": "K"})),  # 5: not in the choices
        seal_query("dev-easy-5", ("bookHotel", {"city": "Rome", "guests": "2.5"})),  # 6: not a whole number
        seal_query("dev-easy-6", ("bookHotel", {"city": "Rome"})),  # 7: required guests missing
        seal_query("dev-easy-7", ("getWeather", {"city": "Oslo", "wind": 3})),  # 8: undeclared parameter
        seal_query("dev-easy-8", ("oddTool", {"x": 1})),  # 9: the tool's type cannot be mapped
        seal_query("dev-easy-9"),  # 10: no calls
        seal_query("dev-difficult-10", ("bookHotel", {"city": "Rome", "guests": 2}),
                   ("getWeather", {"city": "Rome", "speed": 3.5}), query="Book and check."),  # 11
    ])
    stats, traces, quarantine = run(tmp_path, SourceSpec("seal", str(folder), "seal_tools"))
    source = stats["sources"][0]
    assert (source["read"], source["kept"], source["quarantined"]) == (11, 2, 9)
    dev = str(folder / "dev.jsonl")
    assert {e["line"]: (e["path"], e["kind"], e["field"]) for e in quarantine} == {
        2: (dev, "unknown_tool", "calling[0].api"),
        3: (dev, "malformed_json", ""),
        4: (dev, "nested_call", "calling[1].parameters.city"),
        5: (dev, "invalid_argument", "calling[0].parameters.unit"),
        6: (dev, "invalid_argument", "calling[0].parameters.guests"),
        7: (dev, "missing_required_argument", "messages[1].tool_calls[0].arguments"),
        8: (dev, "invalid_argument", "calling[0].parameters.wind"),
        9: (dev, "invalid_trace", "tool.jsonl line 3.parameters.x.type"),
        10: (dev, "empty_trace", "calling"),
    }
    reasons = {e["line"]: e["reason"] for e in quarantine}
    assert reasons[2] == "call to tool 'getForecast' which is not in tool.jsonl"
    assert reasons[4] == ("nested call: argument 'city' of getWeather is API_call_0, the output of calling[0] "
                          "(bookHotel), whose value the data does not give")
    assert reasons[5] == """invalid argument 'unit' for tool 'getWeather': is "K", not one of ["C", "F"]"""
    assert reasons[6] == 'invalid argument \'guests\' for tool \'bookHotel\': is string "2.5", the tool declares integer'
    assert reasons[8] == "invalid argument 'wind': not a parameter of tool 'getWeather'"
    assert reasons[9] == """invalid tool 'oddTool': parameter 'x' has unknown type "complex\""""
    assert next(e for e in quarantine if e["line"] == 3)["id"] is None

    weather, multi = traces
    assert weather["id"] == "seal:dev-easy-0"
    assert calls_of(weather) == [{"name": "getWeather", "arguments": {"city": "Oslo", "days": 3, "unit": "C",
                                                                      "speed": 2}}]
    assert weather["meta"] == {"task": "seal_tools", "kind": "tool", "split": "dev", "level": "easy",
                               "coerced_arguments": ["0.days", "0.speed"]}
    assert weather["tools"][0]["parameters"] == {"type": "object", "properties": {
        "city": {"type": "string", "description": "City"},
        "days": {"type": "integer", "description": "Days ahead", "default": 1},
        "unit": {"type": "string", "description": "Unit", "enum": ["C", "F"]},
        "speed": {"type": "number", "description": "Wind speed Unit: m/s.", "examples": ["2.5"]}},
        "required": ["city"]}
    assert [tool["name"] for tool in multi["tools"]] == ["bookHotel", "getWeather"]
    assert multi["messages"][1]["tool_calls"] == [{"name": "bookHotel", "arguments": {"city": "Rome", "guests": 2}},
                                                  {"name": "getWeather", "arguments": {"city": "Rome", "speed": 3.5}}]
    assert "coerced_arguments" not in multi["meta"]


def test_seal_tools_single_file_source_and_number_coercion(tmp_path):
    folder = seal_folder(tmp_path, [seal_query("dev-easy-0", ("getWeather", {"city": "Oslo", "speed": "19.0"})),
                                    seal_query("dev-easy-1", ("getWeather", {"city": "Oslo", "days": "1e3"}))])
    stats, traces, quarantine = run(tmp_path, SourceSpec("seal", str(folder / "dev.jsonl"), "seal_tools"))
    assert calls_of(traces[0])[0]["arguments"]["speed"] == 19.0
    assert [(e["path"], e["line"], e["kind"]) for e in quarantine] == [(str(folder / "dev.jsonl"), 2,
                                                                        "invalid_argument")]


@pytest.mark.parametrize("tools, message", [
    (None, "no tool.jsonl beside the queries"),
    ([SEAL_TOOLS[0], "{not json"], "tool.jsonl: line 2: malformed JSON"),
    ([SEAL_TOOLS[0], {"api_description": "no name"}], "tool.jsonl: line 2: not a Seal-Tools tool"),
    ([SEAL_TOOLS[0], SEAL_TOOLS[0]], "tool.jsonl: line 2: api_name 'getWeather' is already defined on line 1"),
])
def test_seal_tools_unreadable_tool_file_stops_ingest(tmp_path, tools, message):
    folder = seal_folder(tmp_path, [seal_query("dev-easy-0", ("getWeather", {"city": "Oslo"}))], tools or [])
    if tools is None:
        (folder / "tool.jsonl").unlink()
    with pytest.raises(IngestError, match=f"source 'seal' \\(seal_tools\\) .*{message}"):
        run(tmp_path, SourceSpec("seal", str(folder), "seal_tools"))
    assert not (tmp_path / "out.jsonl").exists()


# --- SGD: bad input -----------------------------------------------------------------------------------------------

SGD_SCHEMA = [{
    "service_name": "Weather_1",
    "description": "Check the weather",
    "slots": [{"name": "city", "description": "City", "is_categorical": False, "possible_values": []},
              {"name": "units", "description": "Units", "is_categorical": True, "possible_values": ["C", "F"]},
              {"name": "temperature", "description": "Temperature", "is_categorical": False, "possible_values": []}],
    "intents": [{"name": "GetWeather", "description": "Get the weather of a city", "is_transactional": False,
                 "required_slots": ["city"], "optional_slots": {"units": "C"},
                 "result_slots": ["city", "temperature"]}],
}]


def sgd_dialogue(dialogue_id, *turns, services=("Weather_1",)):
    return {"dialogue_id": dialogue_id, "services": list(services), "turns": list(turns)}


def user(text, service="Weather_1"):
    return {"speaker": "USER", "utterance": text, "frames": [{"service": service, "actions": []}]}


def system(text, call=None, rows=(), service="Weather_1", method="GetWeather"):
    frame = {"service": service, "actions": []}
    if call is not None:
        frame.update(service_call={"method": method, "parameters": call}, service_results=list(rows))
    return {"speaker": "SYSTEM", "utterance": text, "frames": [frame]}


ROWS = [{"city": "Oslo", "temperature": str(t)} for t in range(5)]


def sgd_folder(tmp_path: Path, files: dict, schema=SGD_SCHEMA) -> Path:
    folder = tmp_path / "sgd"
    folder.mkdir()
    if schema is not None:
        (folder / "schema.json").write_text(json.dumps(schema), encoding="utf-8")
    for name, dialogues in files.items():
        text = dialogues if isinstance(dialogues, str) else json.dumps(dialogues)
        (folder / name).write_text(text, encoding="utf-8")
    return folder


def test_sgd_fixture_quarantines_with_file_dialogue_and_reason(tmp_path):
    good = sgd_dialogue("1_00000", user("Weather?"), system("Which city?"), user("Oslo"),
                        system("", call={"city": "Oslo"}, rows=ROWS), )
    good["turns"][-1]["utterance"] = "It is 0 degrees."
    folder = sgd_folder(tmp_path, {
        "dialogues_001.json": [
            good,  # 1
            sgd_dialogue("1_00001", user("Hi", "Banks_1"), system("Hello", service="Banks_1"),
                         services=["Banks_1"]),  # 2: service not in schema.json
            sgd_dialogue("1_00002", user("Weather?"), system("x", call={"city": "Oslo"}, method="GetForecast")),  # 3
            sgd_dialogue("1_00003", user("Weather?"), system("x", call={"city": "Oslo", "units": "K"})),  # 4
            sgd_dialogue("1_00004", user("Weather?"), system("x", call={"units": "C"})),  # 5: required city missing
            "not a dialogue",  # 6
            sgd_dialogue("1_00005", user("Weather?"), {"speaker": "BOT", "utterance": "x", "frames": []}),  # 7
            sgd_dialogue("1_00006", user("Weather?"), system("x", service="Hotels_9")),  # 8: frame service unknown
            sgd_dialogue("1_00007", user("Weather?"), system("x"), services=[]),  # 9: Weather_1 not listed
        ],
        "dialogues_002.json": [sgd_dialogue("2_00000", user("Weather in Oslo?"),
                                            system("It is 1 degree.", call={"city": "Oslo", "units": "F"},
                                                   rows=ROWS[:1]))],
    })
    stats, traces, quarantine = run(tmp_path, SourceSpec("sgd", str(folder), "sgd"))
    source = stats["sources"][0]
    assert (source["read"], source["kept"], source["quarantined"]) == (10, 2, 8)
    first = str(folder / "dialogues_001.json")
    assert {e["line"]: (e["path"], e["unit"], e["id"], e["kind"], e["field"]) for e in quarantine} == {
        2: (first, "index", "sgd:1_00001", "unknown_service", "services[0]"),
        3: (first, "index", "sgd:1_00002", "unknown_tool", "turns[1].frames[0].service_call.method"),
        4: (first, "index", "sgd:1_00003", "invalid_argument", "turns[1].frames[0].service_call.parameters.units"),
        5: (first, "index", "sgd:1_00004", "missing_required_argument", "messages[1].tool_calls[0].arguments"),
        6: (first, "index", "sgd:dialogues_001#6", "invalid_trace", ""),
        7: (first, "index", "sgd:1_00005", "unknown_role", "turns[1].speaker"),
        8: (first, "index", "sgd:1_00006", "unknown_service", "turns[1].frames[0].service"),
        9: (first, "index", "sgd:1_00007", "invalid_trace", "turns[0].frames[0].service"),
    }
    reasons = {e["line"]: e["reason"] for e in quarantine}
    assert reasons[2] == 'unknown service "Banks_1": not in schema.json'
    assert reasons[3] == ("call to tool 'Weather_1.GetForecast' which is not in schema.json (no intent 'GetForecast' "
                          "in service 'Weather_1')")
    assert reasons[4] == """invalid argument 'units' for tool 'Weather_1.GetWeather': is "K", not one of ["C", "F"]"""
    assert reasons[8] == 'unknown service "Hotels_9": not in schema.json'
    assert reasons[9] == "service 'Weather_1' is not among the dialogue's services"

    kept, other_file = traces
    assert kept["id"] == "sgd:1_00000" and other_file["id"] == "sgd:2_00000"
    assert kept["tools"] == [{"name": "Weather_1.GetWeather", "description": "Get the weather of a city",
                              "parameters": {"type": "object", "properties": {
                                  "city": {"type": "string", "description": "City"},
                                  "units": {"type": "string", "description": "Units", "enum": ["C", "F"],
                                            "default": "C"}},
                                  "required": ["city"]}}]
    assert kept["messages"][3:] == [
        {"role": "assistant", "content": "", "tool_calls": [{"name": "Weather_1.GetWeather",
                                                             "arguments": {"city": "Oslo"}}]},
        {"role": "tool", "name": "Weather_1.GetWeather",
         "content": json.dumps({"count": 5, "results": ROWS[:sgd.RESULT_ROWS]}, ensure_ascii=False)},
        {"role": "assistant", "content": "It is 0 degrees."},
    ]
    assert kept["meta"] == {"task": "sgd", "kind": "tool", "services": ["Weather_1"], "trimmed_results": 1}
    assert other_file["meta"]["trimmed_results"] == 0


def test_sgd_keeps_the_rows_a_later_turn_offers(tmp_path):
    offer = {"act": "OFFER", "slot": "temperature", "values": ["4"]}
    dialogue = sgd_dialogue("1_00000", user("Weather in Oslo?"), system("Zero.", call={"city": "Oslo"}, rows=ROWS),
                            user("Another?"), system("Four."), user("Thanks"), system("Bye."))
    dialogue["turns"][3]["frames"][0]["actions"] = [offer]
    folder = sgd_folder(tmp_path, {"dialogues_001.json": [dialogue]})
    _, traces, _ = run(tmp_path, SourceSpec("sgd", str(folder / "dialogues_001.json"), "sgd"))
    result = json.loads(traces[0]["messages"][2]["content"])
    assert result == {"count": 5, "results": ROWS}  # row 5 (index 4) is offered two turns later
    assert traces[0]["meta"]["trimmed_results"] == 0


@pytest.mark.parametrize("files, schema, message", [
    ({"dialogues_001.json": "[{not json"}, SGD_SCHEMA, r"cannot parse: dialogues_001.json: malformed JSON"),
    ({"dialogues_001.json": "[]"}, None, "no schema.json beside the dialogues"),
    ({"dialogues_001.json": "[]"}, {"Weather_1": {}}, "expected a JSON list of services, got dict"),
    ({"dialogues_001.json": "[]"}, SGD_SCHEMA * 2, "service 2: service_name 'Weather_1' is defined twice"),
    ({}, SGD_SCHEMA, "no SGD dialogue files"),
])
def test_sgd_unreadable_source_stops_ingest(tmp_path, files, schema, message):
    folder = sgd_folder(tmp_path, files, schema)
    with pytest.raises(IngestError, match=f"source 'sgd' \\(sgd\\) .*{message}"):
        run(tmp_path, SourceSpec("sgd", str(folder), "sgd"))


def test_both_readers_ingest_byte_identically_twice(tmp_path):
    seal = seal_folder(tmp_path, [seal_query("dev-easy-0", ("getWeather", {"city": "Oslo", "days": "2"})),
                                  seal_query("dev-easy-1", ("getForecast", {"city": "Oslo"}))])
    dialogue = sgd_dialogue("1_00000", user("Weather in Oslo?"), system("Zero.", call={"city": "Oslo"}, rows=ROWS))
    sgd_dir = sgd_folder(tmp_path, {"dialogues_002.json": [dialogue], "dialogues_001.json": ["not a dialogue"]})
    outputs = []
    for attempt in ("first", "second"):
        out = tmp_path / attempt
        out.mkdir()
        run(out, SourceSpec("seal", str(seal), "seal_tools"), SourceSpec("sgd", str(sgd_dir), "sgd"))
        outputs.append([(out / name).read_bytes() for name in ("out.jsonl", "quarantine.jsonl", "stats.json")])
    assert outputs[0] == outputs[1]
    quarantine = [json.loads(line) for line in outputs[0][1].decode().splitlines()]
    # Files in name order: dialogues_001.json before dialogues_002.json.
    assert [(Path(e["path"]).name, e["line"]) for e in quarantine] == [("dev.jsonl", 2), ("dialogues_001.json", 1)]
