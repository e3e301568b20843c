"""Deterministic demo traces in the canonical schema (docs/trace-schema.md).

Gives:
  generate_traces(n, seed, no_tool_share=0.2) -> list[dict]
      `n` traces: single-step and multi-step tool use run against the mock tools of `agenttune.demo.tools`,
      plus no-tool traces (questions that look tool-related but are answered directly). The same arguments
      always give the same list; all randomness comes from one `random.Random(seed)`.
The demo_traces stage writes them with `agenttune.common.atomic.write_jsonl(path, traces, compact=False)`.
"""

from __future__ import annotations

import copy
import json
import math
import random
from datetime import date, timedelta
from typing import Callable

from agenttune.demo.tools import (CITIES, CURRENCY_NAMES, LANGUAGES, PHRASES, STOCKS, TOOLS, TOOLS_BY_NAME,
                                  UNIT_NAMES, USD_RATES, WEB_FACTS, execute)

# Share of tool traces that chain two or three calls; the rest make one call.
MULTI_STEP_SHARE = 0.3
# Tools offered per trace, distractors included: prompts stay short for CPU training.
MAX_TOOLS = 4

# ---------------------------------------------------------------------------------------------------------
# Entities
# ---------------------------------------------------------------------------------------------------------

CITY_NAMES = list(CITIES)
PEOPLE = [("Anna", "anna.berg@example.com"), ("Marco", "marco.rossi@example.com"),
          ("Priya", "priya.shah@example.com"), ("Tom", "tom.baker@example.com"),
          ("Lena", "lena.fischer@example.com"), ("Kenji", "kenji.sato@example.com"),
          ("Sofia", "sofia.lopez@example.com"), ("David", "david.cohen@example.com"),
          ("Amara", "amara.okafor@example.com"), ("Lucas", "lucas.martin@example.com"),
          ("Ingrid", "ingrid.larsen@example.com"), ("Omar", "omar.haddad@example.com")]
REPOS = [("pallets", "flask"), ("psf", "requests"), ("numpy", "numpy"), ("pandas-dev", "pandas"),
         ("pytorch", "pytorch"), ("huggingface", "transformers"), ("rust-lang", "rust"), ("golang", "go"),
         ("microsoft", "vscode"), ("facebook", "react"), ("vercel", "next.js"), ("django", "django"),
         ("fastapi", "fastapi"), ("kubernetes", "kubernetes"), ("snakemake", "snakemake"),
         ("scikit-learn", "scikit-learn")]
EMAIL_NOTES = [("I'm running about 15 minutes late", "Running late"),
               ("the quarterly report is ready for review", "Quarterly report ready"),
               ("tomorrow's meeting is moved to 3 pm", "Meeting moved"),
               ("the invoice has been paid", "Invoice paid"),
               ("I'll be out of the office on Friday", "Out of office on Friday"),
               ("the build is fixed and the tests pass again", "Build fixed"),
               ("lunch is on me today", "Lunch today"),
               ("the slides for Monday are in the shared folder", "Slides for Monday"),
               ("I've booked the conference room for Thursday", "Room booked"),
               ("the contract draft needs one more signature", "Contract signature"),
               ("the team dinner is confirmed for Saturday", "Team dinner confirmed")]
EVENT_TITLES = ["Dentist appointment", "Team standup", "Lunch with Maria", "Project kickoff", "Yoga class",
                "1:1 with my manager", "Quarterly review", "Call with the landlord", "Book club",
                "Parent-teacher meeting", "Code review session", "Haircut", "Piano lesson", "Sprint planning"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]
WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
TARGET_LANGUAGES = [code for code in LANGUAGES if code != "en"]
# (from, to, low, high): unit pairs with value ranges a person would actually ask about
UNIT_PAIRS = [("km", "mi", 2, 500), ("mi", "km", 2, 300), ("m", "ft", 2, 3000), ("ft", "m", 2, 10000),
              ("cm", "in", 2, 300), ("in", "cm", 2, 100), ("kg", "lb", 2, 150), ("lb", "kg", 2, 300),
              ("g", "oz", 10, 1000), ("oz", "g", 2, 50), ("l", "gal", 2, 200), ("gal", "l", 2, 50),
              ("celsius", "fahrenheit", -30, 45), ("fahrenheit", "celsius", -10, 110),
              ("celsius", "kelvin", -50, 100), ("kelvin", "celsius", 200, 400)]

# ---------------------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------------------


def _fmt(x: float) -> str:
    """A number as people write it: thousands separators, at most two decimals."""
    if isinstance(x, int) or float(x).is_integer():
        return f"{int(x):,}"
    return f"{x:,.2f}".rstrip("0").rstrip(".")


def _money(x: float) -> str:
    return f"{x:,.2f}"


def _is(x: float) -> str:
    return f"is {_fmt(x)}" if round(x, 2) == x else f"is about {_fmt(x)}"


def _degrees(value: float, unit: str) -> str:
    return f"{_fmt(value)} °{'F' if unit == 'fahrenheit' else 'C'}"


def _random_date(rng: random.Random) -> date:
    return date(2025, 1, 1) + timedelta(days=rng.randrange(365))


def _date_words(rng: random.Random, day: date) -> str:
    return rng.choice([f"{WEEKDAYS[day.weekday()]}, {MONTHS[day.month - 1]} {day.day}, {day.year}",
                       f"{day.day} {MONTHS[day.month - 1]} {day.year}", day.isoformat(),
                       f"{MONTHS[day.month - 1]} {day.day}, {day.year}"])


def _time_words(rng: random.Random, hour: int, minute: int) -> str:
    if rng.random() < 0.5:
        return f"{hour:02d}:{minute:02d}"
    suffix = "am" if hour < 12 else "pm"
    h12 = hour % 12 or 12
    return f"{h12} {suffix}" if minute == 0 else f"{h12}:{minute:02d} {suffix}"


def _duration_words(rng: random.Random, minutes: int) -> str:
    options = {15: ["15 minutes", "a quarter of an hour"], 30: ["30 minutes", "half an hour"],
               45: ["45 minutes"], 60: ["an hour", "60 minutes"], 90: ["90 minutes", "an hour and a half"],
               120: ["two hours", "2 hours"]}
    return rng.choice(options[minutes])


def _say(rng: random.Random, templates: list[str], **fields) -> str:
    return rng.choice(templates).format(**fields)


class _Dialogue:
    """The assistant and tool turns of one trace, built by really running the mock tools."""

    def __init__(self):
        self.messages: list[dict] = []
        self.calls: list[str] = []

    def call(self, thought: str, name: str, arguments: dict) -> dict:
        self.messages.append({"role": "assistant", "content": thought,
                              "tool_calls": [{"name": name, "arguments": arguments}]})
        observation = execute(name, arguments)
        self.messages.append({"role": "tool", "name": name, "content": observation})
        self.calls.append(name)
        return json.loads(observation)

    def answer(self, text: str) -> None:
        self.messages.append({"role": "assistant", "content": text})


Scenario = Callable[[random.Random], "tuple[str, _Dialogue]"]

# ---------------------------------------------------------------------------------------------------------
# One call per tool: the pieces the single-step and multi-step scenarios share
# ---------------------------------------------------------------------------------------------------------


def _weather_call(rng: random.Random, d: _Dialogue, city: str, unit: str | None = None) -> dict:
    args = {"city": city} if unit is None else {"city": city, "unit": unit}
    thought = _say(rng, ["I'll check the current weather in {city}.", "Let me look up the weather for {city}.",
                         "I need the current conditions in {city}.", "I'll fetch the weather report for {city}."],
                   city=city)
    return d.call(thought, "get_weather", args)


def _weather_text(obs: dict) -> str:
    return f"{_degrees(obs['temperature'], obs['unit'])} and {obs['conditions']}"


def _stock_call(rng: random.Random, d: _Dialogue, symbol: str) -> dict:
    thought = _say(rng, ["I'll get the latest quote for {symbol}.", "Let me look up {company}'s share price.",
                         "I need the current price of {symbol}."], symbol=symbol, company=STOCKS[symbol][0])
    return d.call(thought, "stock_quote", {"symbol": symbol})


def _email_call(rng: random.Random, d: _Dialogue, first: str, to: str, subject: str, body: str,
                thought: str | None = None) -> dict:
    thought = thought or _say(rng, ["I'll send the email to {to}.", "Let me send that message to {first}.",
                                    "I'll email {first} now."], to=to, first=first)
    return d.call(thought, "send_email", {"to": to, "subject": subject, "body": body})


def _pick_unit_value(rng: random.Random, low: int, high: int) -> int | float:
    value = rng.randint(low, high)
    # a quarter of the values get a decimal, as real measurements often do
    return value + 0.5 if rng.random() < 0.25 else value


# ---------------------------------------------------------------------------------------------------------
# Single-step scenarios (one per tool)
# ---------------------------------------------------------------------------------------------------------


def _single_weather(rng):
    city = rng.choice(CITY_NAMES)
    unit = rng.choice([None, None, "celsius", "fahrenheit"])
    query = _say(rng, ["What's the weather like in {city} right now?", "How's the weather in {city}?",
                       "Is it cold in {city} today?", "Can you check the current weather in {city}?",
                       "I'm heading to {city} — what are the conditions there?", "Tell me the temperature in {city}.",
                       "Weather report for {city}, please.", "What's it like outside in {city} at the moment?"],
                 city=city)
    if unit is not None:
        query += " " + rng.choice([f"Give it to me in {unit.title()}.", f"In {unit.title()}, please.",
                                   f"Use {unit.title()}."])
    d = _Dialogue()
    obs = _weather_call(rng, d, city, unit)
    d.answer(_say(rng, ["It's currently {w} in {city}, with {h}% humidity.",
                        "{city} is at {w} right now, with wind around {wind} km/h.",
                        "Right now it's {w} in {city}; humidity is {h}%."],
                  w=_weather_text(obs), city=city, h=obs["humidity_pct"], wind=obs["wind_kph"]))
    return query, d


_GITHUB_ASKS = [  # (resource, state, per_page wanted?, template)
    ("issues", "open", False, "How many open issues does {owner}/{repo} have?"),
    ("issues", "open", False, "Show me the open issues in the {repo} repo by {owner}."),
    ("issues", "open", True, "List the {k} most recent open issues on {owner}/{repo}."),
    ("issues", "open", False, "Any open bugs reported in {owner}/{repo}?"),
    ("issues", "closed", False, "What were the most recently closed issues in {owner}/{repo}?"),
    ("pulls", "open", False, "Which pull requests are open in {owner}/{repo}?"),
    ("pulls", "open", True, "List the top {k} open PRs for {owner}/{repo}."),
    ("pulls", "open", False, "Are there any pending pull requests on GitHub for {owner}/{repo}?"),
    ("pulls", "closed", False, "Show me the recently closed PRs in {owner}/{repo}."),
    ("releases", None, False, "What's the latest release of {owner}/{repo}?"),
    ("releases", None, False, "Which version did {owner}/{repo} ship most recently?"),
    ("releases", None, True, "Show me the last {k} releases of {owner}/{repo}."),
]


def _github_call(rng, d, owner, repo, resource, state, k=None) -> dict:
    args = {"owner": owner, "repo": repo, "resource": resource}
    if state is not None:
        args["state"] = state
    if k is not None:
        args["per_page"] = k
    what = {"issues": "issues", "pulls": "pull requests", "releases": "releases"}[resource]
    thought = _say(rng, ["I'll query GitHub for the {what} of {owner}/{repo}.",
                         "Let me fetch the {what} from the {owner}/{repo} repository.",
                         "I need to check the {what} of {owner}/{repo} on GitHub."], what=what, owner=owner, repo=repo)
    return d.call(thought, "github_api", args)


def _github_summary(obs: dict) -> str:
    repo = obs["repository"]
    if obs["resource"] == "releases":
        latest = obs["items"][0]
        return f"The latest release of {repo} is {latest['tag']}, published on {latest['published_at']}."
    top = obs["items"][0]
    noun = "issues" if obs["resource"] == "issues" else "pull requests"
    if obs["state"] == "open":
        return (f"{repo} has {obs['total_count']} open {noun}; the newest is #{top['number']} "
                f"\"{top['title']}\" by {top['author']}.")
    return f"The most recently closed of {repo}'s {noun} is #{top['number']} \"{top['title']}\" by {top['author']}."


def _single_github(rng):
    owner, repo = rng.choice(REPOS)
    resource, state, wants_k, template = rng.choice(_GITHUB_ASKS)
    k = rng.randint(2, 3) if wants_k else None
    query = template.format(owner=owner, repo=repo, k=k)
    d = _Dialogue()
    obs = _github_call(rng, d, owner, repo, resource, state, k)
    if k is None:
        d.answer(_github_summary(obs))
    elif resource == "releases":
        d.answer(f"The last {k} releases of {owner}/{repo} are "
                 + ", ".join(f"{item['tag']} ({item['published_at']})" for item in obs["items"]) + ".")
    else:
        d.answer(f"The {k} newest open {'issues' if resource == 'issues' else 'pull requests'} in {owner}/{repo}: "
                 + "; ".join(f"#{item['number']} \"{item['title']}\"" for item in obs["items"]) + ".")
    return query, d


def _single_calculator(rng):
    a, b, c = rng.randint(12, 999), rng.randint(3, 99), rng.randint(2, 40)
    m, p, k = round(rng.uniform(20, 400), 2), rng.choice([10, 12, 15, 18, 20, 25]), rng.randint(2, 8)
    base, exp = rng.randint(2, 12), rng.randint(2, 6)
    x, y = rng.randint(3, 12) + rng.choice([0, 0.5]), rng.randint(2, 9) + rng.choice([0, 0.5])
    dist, fuel = rng.randint(150, 900), rng.randint(10, 70)
    cases = [  # (query, expression, answer with {r})
        (f"What is {a} times {b}?", f"{a} * {b}", f"{a} times {b} {{r}}."),
        (f"Calculate {a} * {b} + {c}.", f"{a} * {b} + {c}", f"{a} * {b} + {c} {{r}}."),
        (f"What's {p}% of {a}?", f"{a} * {p} / 100", f"{p}% of {a} {{r}}."),
        (f"Our dinner bill came to ${_money(m)}. How much is a {p}% tip?", f"{m} * {p} / 100",
         f"A {p}% tip on ${_money(m)} comes to ${{money}}."),
        (f"Split ${_money(m)} evenly between {k} people — how much does each pay?", f"{m} / {k}",
         "Each person pays ${money}."),
        (f"What's {base} to the power of {exp}?", f"{base} ** {exp}", f"{base} to the power of {exp} {{r}}."),
        (f"Compute ({a} + {b}) * {c}.", f"({a} + {b}) * {c}", f"({a} + {b}) * {c} {{r}}."),
        (f"If I save ${b * 10} a month for {c} months, how much will I have?", f"{b * 10} * {c}",
         f"After {c} months you'll have ${{money}}."),
        (f"What's {a} divided by {c}?", f"{a} / {c}", f"{a} divided by {c} {{r}}."),
        (f"A room is {_fmt(x)} m by {_fmt(y)} m. What's its area?", f"{_fmt(x)} * {_fmt(y)}",
         "The room's area {r} square meters."),
        (f"I drove {dist} km on {fuel} liters of fuel. How many liters per 100 km is that?",
         f"{fuel} / {dist} * 100", "That's about {money} liters per 100 km."),
    ]
    query, expression, answer = rng.choice(cases)
    d = _Dialogue()
    thought = _say(rng, ["I'll compute this with the calculator.", "Let me calculate {e}.",
                         "I'll evaluate {e} to get an exact answer."], e=expression)
    obs = d.call(thought, "calculator", {"expression": expression})
    d.answer(answer.format(r=_is(obs["result"]), money=_money(obs["result"])))
    return query, d


def _search_call(rng, d, fact, k=None, thought=None) -> dict:
    args = {"query": fact["query"]} if k is None else {"query": fact["query"], "num_results": k}
    thought = thought or _say(rng, ["I'll search the web for {topic}.", "Let me look that up online.",
                                    "I need a reliable source, so I'll run a web search."], topic=fact["topic"])
    return d.call(thought, "web_search", args)


def _single_search(rng):
    fact = rng.choice(WEB_FACTS)
    k = rng.choice([None, None, 1, 2, 3])
    query = _say(rng, ["Search the web for {topic}.", "Look up {topic} for me.", "Can you find {topic} online?",
                       "I need {topic} — please search for it.", "Find a reliable source on {topic}.",
                       "Google {topic}, please.", "Do a quick web search on {topic}."], topic=fact["topic"])
    if k is not None:
        query += f" Just the top {k} result{'s' if k > 1 else ''}."
    d = _Dialogue()
    obs = _search_call(rng, d, fact, k)
    source = obs["results"][0]["url"].split("/")[2]
    d.answer(_say(rng, ["{answer} (source: {source})", "According to {source}: {answer}", "{answer}"],
                  answer=fact["answer"], source=source))
    return query, d


def _calendar_request(rng):
    title, day = rng.choice(EVENT_TITLES), _random_date(rng)
    hour, minute = rng.randint(7, 19), rng.choice([0, 0, 15, 30, 45])
    minutes = rng.choice([15, 30, 45, 60, 60, 90, 120])
    words = {"title": title, "date": _date_words(rng, day), "time": _time_words(rng, hour, minute),
             "dur": _duration_words(rng, minutes)}
    args = {"title": title, "date": day.isoformat(), "time": f"{hour:02d}:{minute:02d}", "duration_minutes": minutes}
    return words, args


def _single_calendar(rng):
    words, args = _calendar_request(rng)
    query = _say(rng, ["Add '{title}' to my calendar on {date} at {time} for {dur}.",
                       "Schedule \"{title}\" for {date} at {time}, {dur} long.",
                       "Put an event called '{title}' on {date} at {time}; it lasts {dur}.",
                       "Create a calendar event: {title}, {date} at {time}, {dur}.",
                       "Can you block {dur} on {date} starting at {time} for '{title}'?",
                       "Book {title} in my calendar — {date}, {time}, {dur}.",
                       "Set up '{title}' on {date} starting {time}, lasting {dur}."], **words)
    if rng.random() < 0.3:
        first, email = rng.choice(PEOPLE)
        args["attendees"] = [email]
        query += f" Invite {first} ({email}) too."
    d = _Dialogue()
    thought = _say(rng, ["I'll create the event in your calendar.", "Let me add \"{title}\" to your calendar.",
                         "I'll schedule that for {date}."], title=args["title"], date=args["date"])
    obs = d.call(thought, "create_calendar_event", args)
    start, end = obs["start"].split("T"), obs["end"].split("T")[1]
    invited = f"; I invited {obs['invited'][0]}" if obs.get("invited") else ""
    d.answer(f"Done: \"{obs['title']}\" is on your calendar for {start[0]} from {start[1]} to {end}{invited}.")
    return query, d


def _currency_call(rng, d, amount, src, dst, thought=None) -> dict:
    thought = thought or _say(rng, ["I'll convert {amount} {src} to {dst}.", "Let me get the current {src} to {dst} rate.",
                                    "I need the exchange rate from {src} to {dst}."], amount=_fmt(amount), src=src, dst=dst)
    return d.call(thought, "currency_convert", {"amount": amount, "from_currency": src, "to_currency": dst})


def _single_currency(rng):
    src, dst = rng.sample(list(USD_RATES), 2)
    amount = rng.choice([rng.randint(5, 5000), round(rng.uniform(5, 900), 2)])
    if src in ("JPY", "KRW"):  # amounts of yen or won are in the thousands
        amount = rng.randint(10, 500) * 100
    fields = {"amount": _fmt(amount), "src": src, "dst": dst, "src_name": CURRENCY_NAMES[src],
              "dst_name": CURRENCY_NAMES[dst]}
    query = _say(rng, ["Convert {amount} {src} to {dst}.", "How much is {amount} {src_name} in {dst_name}?",
                       "What's {amount} {src} worth in {dst}?", "I have {amount} {src_name}; how many {dst_name} is that?",
                       "Exchange {amount} {src} into {dst} for me.", "{amount} {src} to {dst}?",
                       "How many {dst_name} would I get for {amount} {src_name}?"], **fields)
    d = _Dialogue()
    obs = _currency_call(rng, d, amount, src, dst)
    d.answer(_say(rng, ["{amount} {src} is about {conv} {dst} at a rate of {rate}.",
                        "At today's rate of {rate}, {amount} {src} comes to {conv} {dst}.",
                        "That's {conv} {dst_name} (1 {src} = {rate} {dst})."],
                  amount=_fmt(amount), src=src, dst=dst, conv=_money(obs["converted"]), rate=obs["rate"],
                  dst_name=CURRENCY_NAMES[dst]))
    return query, d


def _units_call(rng, d, value, src, dst, thought=None) -> dict:
    thought = thought or _say(rng, ["I'll convert {v} {a} to {b}.", "Let me run the unit conversion.",
                                    "I'll use the unit converter for this."], v=_fmt(value), a=UNIT_NAMES[src],
                              b=UNIT_NAMES[dst])
    return d.call(thought, "unit_convert", {"value": value, "from_unit": src, "to_unit": dst})


def _single_units(rng):
    src, dst, low, high = rng.choice(UNIT_PAIRS)
    value = _pick_unit_value(rng, low, high)
    fields = {"v": _fmt(value), "a": UNIT_NAMES[src], "b": UNIT_NAMES[dst]}
    query = _say(rng, ["Convert {v} {a} to {b}.", "How many {b} is {v} {a}?", "What is {v} {a} in {b}?",
                       "{v} {a} in {b}, please.", "Can you turn {v} {a} into {b}?", "Express {v} {a} in {b}.",
                       "I have a value of {v} {a} — what's that in {b}?"], **fields)
    d = _Dialogue()
    obs = _units_call(rng, d, value, src, dst)
    d.answer(_say(rng, ["{v} {a} {r} {b}.", "That's {rr} {b}."], v=_fmt(value), a=UNIT_NAMES[src], b=UNIT_NAMES[dst],
                  r=_is(obs["result"]), rr=_fmt(obs["result"])))
    return query, d


def _stock_words(symbol: str) -> str:
    company = STOCKS[symbol][0]
    return symbol if company == symbol else f"{company} ({symbol})"


def _single_stock(rng):
    symbol = rng.choice(list(STOCKS))
    company = STOCKS[symbol][0]
    query = _say(rng, ["What's {company}'s stock price?", "How is {symbol} trading today?", "Give me a quote for {symbol}.",
                       "What's the current share price of {company}?", "Check the stock price of {company} ({symbol}).",
                       "How much is one share of {company} right now?", "Is {symbol} up or down today?"],
                 company=company, symbol=symbol)
    d = _Dialogue()
    obs = _stock_call(rng, d, symbol)
    move = f"{'up' if obs['change_pct'] >= 0 else 'down'} {abs(obs['change_pct'])}% today"
    d.answer(_say(rng, ["{name} is trading at ${price}, {move}.", "{name} stands at ${price} ({move})."],
                  name=_stock_words(symbol), price=_money(obs["price"]), move=move))
    return query, d


def _translate_call(rng, d, text, target, source=None) -> dict:
    args = {"text": text, "target_language": target}
    if source is not None:
        args["source_language"] = source
    thought = _say(rng, ["I'll translate that into {lang}.", "Let me get the {lang} translation.",
                         "I'll run the text through the translator."], lang=LANGUAGES[target])
    return d.call(thought, "translate", args)


def _single_translate(rng):
    english = rng.choice(list(PHRASES))
    d = _Dialogue()
    if rng.random() < 0.2:  # the other direction: a foreign phrase into English
        source = rng.choice(TARGET_LANGUAGES)
        text = PHRASES[english][source]
        query = _say(rng, ["What does '{text}' mean in English?", "Translate '{text}' from {lang} to English.",
                           "Can you tell me what \"{text}\" means? It's {lang}."], text=text, lang=LANGUAGES[source])
        obs = _translate_call(rng, d, text, "en", source if rng.random() < 0.5 else None)
        d.answer(f"\"{text}\" means \"{obs['translated_text']}\" in English.")
        return query, d
    target = rng.choice(TARGET_LANGUAGES)
    query = _say(rng, ["Translate '{text}' into {lang}.", "How do I say '{text}' in {lang}?", "What's '{text}' in {lang}?",
                       "Can you translate \"{text}\" to {lang} for me?", "I need '{text}' in {lang}, please.",
                       "Please put '{text}' into {lang}.", "How would you write \"{text}\" in {lang}?"],
                 text=english, lang=LANGUAGES[target])
    obs = _translate_call(rng, d, english, target, "en" if rng.random() < 0.3 else None)
    d.answer(_say(rng, ["In {lang}, that's \"{t}\".", "\"{e}\" in {lang} is \"{t}\"."],
                  lang=LANGUAGES[target], t=obs["translated_text"], e=english))
    return query, d


def _single_email(rng):
    first, to = rng.choice(PEOPLE)
    note, subject = rng.choice(EMAIL_NOTES)
    query = _say(rng, ["Send an email to {to} saying {note}.", "Email {first} at {to} that {note}.",
                       "Can you let {first} know by email ({to}) that {note}?",
                       "Please write to {to} with the subject '{subject}' and tell them {note}.",
                       "Shoot {first} a quick email at {to}: {note}.", "Drop {first} ({to}) an email saying {note}.",
                       "Notify {to} by email that {note}."], first=first, to=to, note=note, subject=subject)
    d = _Dialogue()
    _email_call(rng, d, first, to, subject, f"Hi {first}, {note}.")
    d.answer(_say(rng, ["Done — I emailed {first} at {to} with the subject \"{subject}\".",
                        "Your email to {first} ({to}) has been sent.",
                        "Sent! {to} will get your message \"{subject}\"."], first=first, to=to, subject=subject))
    return query, d


def _single_time(rng):
    city = rng.choice(CITY_NAMES)
    query = _say(rng, ["What time is it in {city}?", "What's the local time in {city} right now?",
                       "Tell me the current time in {city}.", "Is it late in {city} right now?",
                       "I need to call someone in {city} — what time is it there?", "Check the clock in {city} for me.",
                       "What's the time over in {city}?"], city=city)
    d = _Dialogue()
    thought = _say(rng, ["I'll check the local time in {city}.", "Let me get the current time in {city}.",
                         "I need {city}'s local time."], city=city)
    obs = d.call(thought, "get_time", {"city": city})
    d.answer(_say(rng, ["It's {t} in {city} ({tz}, UTC{off}).", "The local time in {city} is {t} (UTC{off})."],
                  t=obs["local_time"], city=city, tz=obs["timezone"], off=obs["utc_offset"]))
    return query, d


SINGLE_STEP: list[Scenario] = [_single_weather, _single_github, _single_calculator, _single_search, _single_calendar,
                               _single_currency, _single_units, _single_stock, _single_translate, _single_email,
                               _single_time]

# ---------------------------------------------------------------------------------------------------------
# Multi-step scenarios: later calls use what earlier calls returned
# ---------------------------------------------------------------------------------------------------------


def _multi_weather_email(rng):
    city, (first, to) = rng.choice(CITY_NAMES), rng.choice(PEOPLE)
    query = _say(rng, ["Check the weather in {city} and email it to {first} at {to}.",
                       "Can you send {to} a quick note with the current weather in {city}?",
                       "Look up the weather in {city}, then let {first} ({to}) know by email.",
                       "{first} is flying to {city}; email them ({to}) what the weather is like there."],
                 city=city, first=first, to=to)
    d = _Dialogue()
    obs = _weather_call(rng, d, city)
    w = _weather_text(obs)
    _email_call(rng, d, first, to, f"Weather in {city}", f"Hi {first}, it's currently {w} in {city}.",
                thought=f"It's {w} in {city}; now I'll email that to {first}.")
    d.answer(f"I emailed {first} that it's {w} in {city} right now.")
    return query, d


def _multi_weather_compare(rng):
    a, b = rng.sample(CITY_NAMES, 2)
    query = _say(rng, ["Is it warmer in {a} or {b} right now?", "Compare the current weather in {a} and {b}.",
                       "Which is colder at the moment, {a} or {b}?", "How does the weather in {a} compare to {b} today?"],
                 a=a, b=b)
    d = _Dialogue()
    first = _weather_call(rng, d, a)
    second = d.call(f"{a} is at {_weather_text(first)}; now I'll check {b}.", "get_weather", {"city": b})
    if first["temperature"] == second["temperature"]:
        verdict = "Both are the same temperature"
    else:
        warmer = a if first["temperature"] > second["temperature"] else b
        verdict = f"{warmer} is warmer"
    d.answer(f"{verdict}: {a} is {_weather_text(first)}, {b} is {_weather_text(second)}.")
    return query, d


def _multi_weather_calendar(rng):
    city = rng.choice(CITY_NAMES)
    words, args = _calendar_request(rng)
    query = _say(rng, ["What's the weather in {city} now? Also add '{title}' to my calendar on {date} at {time} for {dur}.",
                       "Check the weather in {city}, then schedule \"{title}\" for {date} at {time} ({dur}).",
                       "Tell me how the weather is in {city} and put '{title}' on my calendar: {date}, {time}, {dur}."],
                 city=city, **words)
    d = _Dialogue()
    w = _weather_text(_weather_call(rng, d, city))
    event = d.call(f"It's {w} in {city}; next I'll create the calendar event.", "create_calendar_event", args)
    start = event["start"].split("T")
    d.answer(f"It's {w} in {city}, and \"{event['title']}\" is booked for {start[0]} at {start[1]}.")
    return query, d


def _multi_stock_currency(rng, email: bool = False):
    symbol = rng.choice(list(STOCKS))
    dst = rng.choice([c for c in USD_RATES if c != "USD"])
    company = STOCKS[symbol][0]
    query = _say(rng, ["What's {company}'s share price in {dst_name}?", "How much is one {symbol} share in {dst}?",
                       "Get me the {symbol} stock price converted to {dst}.",
                       "I pay in {dst_name}; what does a share of {company} cost right now?"],
                 company=company, symbol=symbol, dst=dst, dst_name=CURRENCY_NAMES[dst])
    first, to = rng.choice(PEOPLE)
    if email:
        query += f" Then email the figure to {first} at {to}."
    d = _Dialogue()
    quote = _stock_call(rng, d, symbol)
    conv = _currency_call(rng, d, quote["price"], "USD", dst,
                          thought=f"{symbol} is at ${_money(quote['price'])}; now I'll convert that to {dst}.")
    price_text = f"{_stock_words(symbol)} is at ${_money(quote['price'])}, about {_money(conv['converted'])} {dst}"
    if email:
        _email_call(rng, d, first, to, f"{symbol} share price", f"Hi {first}, {price_text}.",
                    thought=f"That's {_money(conv['converted'])} {dst}; now I'll email it to {first}.")
        d.answer(f"{price_text}; I've emailed that to {first}.")
    else:
        d.answer(f"{price_text} at a rate of {conv['rate']}.")
    return query, d


def _multi_stock_currency_email(rng):
    return _multi_stock_currency(rng, email=True)


def _multi_stock_calculator(rng):
    symbol, shares = rng.choice(list(STOCKS)), rng.randint(2, 60)
    query = _say(rng, ["How much would {n} shares of {symbol} cost right now?",
                       "I want to buy {n} {company} shares. What's the total at today's price?",
                       "What's the current value of {n} shares of {company}?"],
                 n=shares, symbol=symbol, company=STOCKS[symbol][0])
    d = _Dialogue()
    quote = _stock_call(rng, d, symbol)
    expression = f"{quote['price']} * {shares}"
    total = d.call(f"{symbol} is at ${_money(quote['price'])}; I'll multiply by {shares}.", "calculator",
                   {"expression": expression})
    d.answer(f"At ${_money(quote['price'])} a share, {shares} shares of {symbol} cost ${_money(total['result'])}.")
    return query, d


def _multi_currency_split(rng):
    src, dst = rng.sample(list(USD_RATES), 2)
    amount, people = rng.randint(60, 3000), rng.randint(2, 8)
    if src in ("JPY", "KRW"):
        amount *= 100
    query = _say(rng, ["Convert {amount} {src} to {dst} and split it evenly among {k} people.",
                       "We spent {amount} {src_name} on the trip; how much is each of our {k} shares in {dst}?",
                       "Our group of {k} owes {amount} {src}. What does each person pay in {dst_name}?"],
                 amount=_fmt(amount), src=src, dst=dst, k=people, src_name=CURRENCY_NAMES[src],
                 dst_name=CURRENCY_NAMES[dst])
    d = _Dialogue()
    conv = _currency_call(rng, d, amount, src, dst)
    share = d.call(f"That's {_money(conv['converted'])} {dst}; now I'll divide it by {people}.", "calculator",
                   {"expression": f"{conv['converted']} / {people}"})
    d.answer(f"{_fmt(amount)} {src} is {_money(conv['converted'])} {dst}, so each of the {people} people pays "
             f"{_money(share['result'])} {dst}.")
    return query, d


def _multi_search_units(rng):
    fact = rng.choice([f for f in WEB_FACTS if "value" in f])
    value, src, dst = fact["value"]
    query = _say(rng, ["Look up {topic} and convert it to {b}.", "Search for {topic}, then give me the figure in {b}.",
                       "Find {topic} online and tell me what that is in {b}.",
                       "I'd like {topic} in {b} — can you search and convert?"], topic=fact["topic"], b=UNIT_NAMES[dst])
    d = _Dialogue()
    _search_call(rng, d, fact)
    conv = _units_call(rng, d, value, src, dst,
                       thought=f"The source gives {_fmt(value)} {UNIT_NAMES[src]}; I'll convert that to {UNIT_NAMES[dst]}.")
    d.answer(f"{fact['answer']} That's about {_fmt(conv['result'])} {UNIT_NAMES[dst]}.")
    return query, d


def _multi_search_email(rng):
    fact, (first, to) = rng.choice(WEB_FACTS), rng.choice(PEOPLE)
    query = _say(rng, ["Look up {topic} and email the answer to {first} ({to}).",
                       "{first} asked me about {topic}. Search it and send them ({to}) what you find.",
                       "Find {topic} on the web and mail it to {to}."], topic=fact["topic"], first=first, to=to)
    d = _Dialogue()
    obs = _search_call(rng, d, fact)
    source = obs["results"][0]["url"]
    _email_call(rng, d, first, to, f"About {fact['topic']}", f"Hi {first}, {fact['answer']} Source: {source}",
                thought=f"I found it; now I'll send the answer to {first}.")
    d.answer(f"{fact['answer']} I've sent that to {first} with the source.")
    return query, d


def _multi_translate_email(rng):
    english, target = rng.choice(list(PHRASES)), rng.choice(TARGET_LANGUAGES)
    first, to = rng.choice(PEOPLE)
    query = _say(rng, ["Translate '{text}' into {lang} and email it to {first} at {to}.",
                       "Send {to} the {lang} for '{text}'.",
                       "{first} ({to}) only reads {lang}; email them '{text}' in their language."],
                 text=english, lang=LANGUAGES[target], first=first, to=to)
    d = _Dialogue()
    translated = _translate_call(rng, d, english, target)["translated_text"]
    _email_call(rng, d, first, to, english, translated,
                thought=f"In {LANGUAGES[target]} that's \"{translated}\"; now I'll email it to {first}.")
    d.answer(f"I emailed {first} \"{translated}\", the {LANGUAGES[target]} for \"{english}\".")
    return query, d


def _multi_github_email(rng):
    (owner, repo), (first, to) = rng.choice(REPOS), rng.choice(PEOPLE)
    resource = rng.choice(["issues", "pulls"])
    noun = "issues" if resource == "issues" else "pull requests"
    query = _say(rng, ["Email {first} ({to}) a summary of the open {noun} in {owner}/{repo}.",
                       "Check the open {noun} on {owner}/{repo} and send the count to {to}.",
                       "Get the open {noun} for {owner}/{repo} and let {first} know by email at {to}."],
                 first=first, to=to, noun=noun, owner=owner, repo=repo)
    d = _Dialogue()
    summary = _github_summary(_github_call(rng, d, owner, repo, resource, "open"))
    _email_call(rng, d, first, to, f"Open {noun} in {owner}/{repo}", f"Hi {first}, {summary}",
                thought=f"I have the {noun}; now I'll email the summary to {first}.")
    d.answer(f"{summary} I've emailed this to {first}.")
    return query, d


MULTI_STEP: list[Scenario] = [_multi_weather_email, _multi_weather_compare, _multi_weather_calendar,
                              _multi_stock_currency, _multi_stock_currency_email, _multi_stock_calculator,
                              _multi_currency_split, _multi_search_units, _multi_search_email,
                              _multi_translate_email, _multi_github_email]

# ---------------------------------------------------------------------------------------------------------
# No-tool questions: they sound like a tool's domain but need only knowledge or writing
# ---------------------------------------------------------------------------------------------------------

# (question, answer, the tool it seems to call for)
NO_TOOL_QA: list[tuple[str, str, str]] = [
    ("What does 'API rate limit' mean?", "An API rate limit caps how many requests a client may send in a time window; "
     "extra requests are rejected until the window resets.", "github_api"),
    ("Explain what a stock dividend is.", "A dividend is a share of a company's profits paid to its shareholders, "
     "often in cash every quarter.", "stock_quote"),
    ("How do I write a polite email to decline a meeting?", "Thank the sender, say briefly that you can't attend, "
     "and offer an alternative such as another time or a written update.", "send_email"),
    ("What's the difference between Celsius and Fahrenheit?", "Both measure temperature: water freezes at 0 °C or 32 °F "
     "and boils at 100 °C or 212 °F, so one Celsius degree equals 1.8 Fahrenheit degrees.", "unit_convert"),
    ("What is a pull request?", "A pull request proposes merging changes from one branch into another so others can "
     "review and discuss them first.", "github_api"),
    ("What does humidity actually measure?", "Humidity is the amount of water vapour in the air; relative humidity "
     "gives it as a percentage of the most the air could hold at that temperature.", "get_weather"),
    ("What is an exchange rate?", "An exchange rate is the price of one currency in another, for example how many "
     "euros one US dollar buys.", "currency_convert"),
    ("Why do time zones exist?", "Time zones keep clocks roughly in step with the sun, so noon falls near midday "
     "everywhere as the Earth rotates.", "get_time"),
    ("What's the order of operations in math?", "Parentheses first, then exponents, then multiplication and division "
     "left to right, then addition and subtraction left to right.", "calculator"),
    ("What does a company's market capitalization mean?", "Market capitalization is the share price times the number "
     "of shares outstanding: the market's value for the whole company.", "stock_quote"),
    ("Can you suggest a subject line for a project update email?", "Try \"Project update: progress, next steps and "
     "open questions\" — short, specific and easy to scan.", "send_email"),
    ("What's a good way to end a formal email?", "Close with a short line such as \"Kind regards\" or \"Best regards\", "
     "followed by your full name.", "send_email"),
    ("What is the difference between weather and climate?", "Weather is the state of the atmosphere over hours or days; "
     "climate is the average weather of a place over decades.", "get_weather"),
    ("What does 'bull market' mean?", "A bull market is a period of generally rising stock prices and optimism, "
     "the opposite of a bear market.", "stock_quote"),
    ("What's the difference between an issue and a pull request on GitHub?", "An issue tracks a bug, idea or task; "
     "a pull request carries actual code changes proposed for merging.", "github_api"),
    ("What is a git commit?", "A commit is a saved snapshot of changes in a Git repository, with a message, an author "
     "and a link to its parent commit.", "github_api"),
    ("How many meters are in a kilometer?", "There are 1,000 meters in a kilometer.", "unit_convert"),
    ("How many days are in a leap year?", "A leap year has 366 days; the extra day is February 29.",
     "create_calendar_event"),
    ("What does UTC stand for?", "UTC is Coordinated Universal Time, the reference from which time zones are "
     "defined as offsets.", "get_time"),
    ("Is it 'affect' or 'effect'?", "Usually 'affect' is the verb (the rain affected traffic) and 'effect' the noun "
     "(the rain had an effect).", "translate"),
    ("What's the difference between 'its' and 'it's'?", "'It's' is short for 'it is' or 'it has'; 'its' is "
     "possessive, as in 'the dog wagged its tail'.", "translate"),
    ("What is inflation?", "Inflation is the general rise in prices over time, so each unit of money buys a little "
     "less.", "currency_convert"),
    ("Why does the euro have a different value from the dollar?", "Each currency's value is set by supply and demand "
     "on foreign-exchange markets, driven by interest rates, trade and economic outlook.", "currency_convert"),
    ("What is a search engine?", "A search engine crawls and indexes web pages, then ranks the ones most relevant to "
     "the words you type.", "web_search"),
    ("Give me tips for writing a good search query.", "Use specific keywords, put exact phrases in quotes and add a "
     "place or year to narrow the results.", "web_search"),
    ("What is a percentage?", "A percentage is a fraction of 100, so 25% means 25 out of every 100, or one quarter.",
     "calculator"),
    ("What's a square root?", "The square root of x is the number that gives x when multiplied by itself; the square "
     "root of 49 is 7.", "calculator"),
    ("Explain what an index fund is.", "An index fund holds all the stocks of a market index such as the S&P 500, "
     "giving broad diversification at low cost.", "stock_quote"),
    ("What does time-blocking mean?", "Time-blocking means reserving fixed calendar slots for specific tasks, so "
     "focused work gets protected time.", "create_calendar_event"),
    ("How long should a meeting agenda be?", "Keep it to a few bullet points: the goal, the topics with rough times "
     "and the decisions you need.", "create_calendar_event"),
    ("Write a one-line out-of-office message.", "Thanks for your email — I'm out of the office until Monday and will "
     "reply when I'm back.", "send_email"),
    ("What is a weather front?", "A front is the boundary between two air masses of different temperature; passing "
     "fronts often bring clouds, rain and shifting winds.", "get_weather"),
    ("Why is the sky blue?", "Air molecules scatter blue sunlight much more than red, so blue light reaches your eyes "
     "from every direction.", "get_weather"),
    ("What's the difference between a kilogram and a pound?", "A kilogram is the metric unit of mass; a pound is an "
     "imperial unit of about 0.454 kg, so 1 kg is about 2.2 lb.", "unit_convert"),
    ("What is the metric system?", "The metric system is a decimal system of units built on the meter, kilogram and "
     "second, with prefixes like kilo- and milli- for powers of ten.", "unit_convert"),
    ("What is an open-source license?", "An open-source license lets anyone use, study, change and share the software "
     "under stated conditions; MIT and GPL are common examples.", "github_api"),
    ("What does REST mean in 'REST API'?", "REST (Representational State Transfer) is an API style where resources "
     "have URLs and are read or changed with HTTP methods like GET and POST.", "github_api"),
    ("What is a stock ticker symbol?", "A ticker is a short code for a company's shares on an exchange, such as AAPL "
     "for Apple.", "stock_quote"),
    ("How do I politely follow up on an unanswered email?", "Reply in the same thread after a few days, restate your "
     "question briefly and ask whether they've had a chance to look at it.", "send_email"),
    ("What's a good way to start a cover letter?", "Open with the role you're applying for and one specific reason "
     "you're a strong fit, instead of a generic greeting.", "send_email"),
    ("What do 'bid' and 'ask' mean in trading?", "The bid is the highest price a buyer will pay, the ask the lowest "
     "price a seller will accept; the gap between them is the spread.", "stock_quote"),
    ("What's the difference between AM and PM?", "AM runs from midnight to noon and PM from noon to midnight, from the "
     "Latin ante meridiem and post meridiem.", "get_time"),
    ("What is a leap second?", "A leap second is an extra second occasionally added to UTC to keep it in line with "
     "the Earth's slightly irregular rotation.", "get_time"),
    ("What is a fiscal year?", "A fiscal year is the 12-month period an organisation uses for its accounts, which "
     "need not start on January 1.", "stock_quote"),
    ("What is a README file for?", "A README explains what a project does, how to install and use it and how to "
     "contribute; it's the first file visitors read.", "github_api"),
    ("What does 'wind chill' mean?", "Wind chill is how cold it feels on exposed skin when wind speeds up heat loss, "
     "so it feels colder than the thermometer reading.", "get_weather"),
    ("Give me a tip for staying productive while working from home.", "Keep a fixed start time and a separate "
     "workspace, and block focused hours in your calendar before checking messages.", "create_calendar_event"),
    ("What is a currency code like USD or EUR?", "It's a three-letter ISO 4217 code: usually two letters for the "
     "country or region and one for the currency, as in USD for the US dollar.", "currency_convert"),
    ("What's the difference between a language and a dialect?", "A dialect is a regional or social variety of a "
     "language; which varieties count as separate languages is often as much political as linguistic.", "translate"),
    ("Why is machine translation sometimes wrong?", "It predicts likely wordings from patterns in data, so idioms, "
     "ambiguity and missing context can lead it astray.", "translate"),
]
_QUESTION_LEADS = ["", "", "Quick question: ", "Hey, ", "Out of curiosity, ", "Sorry if this is basic, but ",
                   "I was wondering, "]
_REQUEST_LEADS = ["", "", "Hey, ", "Please "]

CAPITALS = [("Norway", "Oslo"), ("Japan", "Tokyo"), ("Canada", "Ottawa"), ("Australia", "Canberra"),
            ("Brazil", "Brasília"), ("Kenya", "Nairobi"), ("Portugal", "Lisbon"), ("Egypt", "Cairo"),
            ("Argentina", "Buenos Aires"), ("South Korea", "Seoul"), ("Turkey", "Ankara"), ("Switzerland", "Bern"),
            ("New Zealand", "Wellington"), ("India", "New Delhi"), ("Mexico", "Mexico City"), ("Vietnam", "Hanoi"),
            ("Morocco", "Rabat"), ("Poland", "Warsaw")]
COUNTRY_CURRENCIES = [("Japan", "the Japanese yen", "JPY"), ("Switzerland", "the Swiss franc", "CHF"),
                      ("the United Kingdom", "the pound sterling", "GBP"), ("Norway", "the Norwegian krone", "NOK"),
                      ("Sweden", "the Swedish krona", "SEK"), ("India", "the Indian rupee", "INR"),
                      ("Brazil", "the Brazilian real", "BRL"), ("Mexico", "the Mexican peso", "MXN"),
                      ("South Korea", "the South Korean won", "KRW"), ("Poland", "the Polish złoty", "PLN"),
                      ("Australia", "the Australian dollar", "AUD"), ("Canada", "the Canadian dollar", "CAD"),
                      ("Denmark", "the Danish krone", "DKK"), ("China", "the renminbi (yuan)", "CNY"),
                      ("Germany", "the euro", "EUR"), ("Italy", "the euro", "EUR")]
UNIT_FACTS = [("seconds", "minute", "60"), ("minutes", "hour", "60"), ("hours", "day", "24"), ("days", "week", "7"),
              ("months", "year", "12"), ("centimeters", "meter", "100"), ("millimeters", "centimeter", "10"),
              ("grams", "kilogram", "1,000"), ("milliliters", "liter", "1,000"), ("inches", "foot", "12"),
              ("feet", "yard", "3"), ("ounces", "pound", "16")]
THANKS = ["the birthday gift", "helping with the move", "covering my shift", "the lovely dinner", "reviewing my code",
          "the book recommendation", "the warm welcome", "your patience this week"]


def _lead(rng: random.Random, text: str, leads: list[str]) -> str:
    lead = rng.choice(leads)
    if not lead:
        return text
    return lead + text[0].lower() + text[1:]


def _no_tool(rng: random.Random) -> tuple[str, str, list[str]]:
    """A no-tool exchange: (query, answer, tools it seems related to)."""
    family = rng.choices(["fixed", "capital", "currency", "units", "thanks"], weights=[12, 2, 2, 2, 2])[0]
    if family == "capital":
        country, capital = rng.choice(CAPITALS)
        query = _say(rng, ["What's the capital of {c}?", "Which city is the capital of {c}?", "Tell me the capital of {c}."],
                     c=country)
        return _lead(rng, query, _QUESTION_LEADS), f"The capital of {country} is {capital}.", ["web_search", "get_weather"]
    if family == "currency":
        country, name, code = rng.choice(COUNTRY_CURRENCIES)
        query = _say(rng, ["What currency do they use in {c}?", "Which currency is used in {c}?",
                           "What money should I bring to {c}?"], c=country)
        answer = f"{country[0].upper() + country[1:]} uses {name} ({code})."
        return _lead(rng, query, _QUESTION_LEADS), answer, ["currency_convert"]
    if family == "units":
        small, big, count = rng.choice(UNIT_FACTS)
        query = _say(rng, ["How many {s} are in a {b}?", "How many {s} make a {b}?", "How many {s} does a {b} have?"],
                     s=small, b=big)
        return _lead(rng, query, _QUESTION_LEADS), f"There are {count} {small} in a {big}.", ["unit_convert", "calculator"]
    if family == "thanks":
        first, _ = rng.choice(PEOPLE)
        thing = rng.choice(THANKS)
        query = _say(rng, ["Write a short thank-you note to {f} for {t}.", "Draft a two-line thank-you message to {f} for {t}.",
                           "Help me thank {f} for {t} in one or two sentences."], f=first, t=thing)
        answer = f"Hi {first}, thank you so much for {thing} — it really means a lot to me. Best wishes!"
        return query, answer, ["send_email"]
    question, answer, tool = rng.choice(NO_TOOL_QA)
    leads = _QUESTION_LEADS if question.endswith("?") else _REQUEST_LEADS
    return _lead(rng, question, leads), answer, [tool]

# ---------------------------------------------------------------------------------------------------------
# Assembly
# ---------------------------------------------------------------------------------------------------------


def _toolset(rng: random.Random, used: list[str], total: int) -> list[dict]:
    """The used tools plus distractors up to `total`, in a shuffled order, as fresh copies."""
    pool = [tool["name"] for tool in TOOLS if tool["name"] not in used]
    names = used + rng.sample(pool, total - len(used))
    rng.shuffle(names)
    return [copy.deepcopy(TOOLS_BY_NAME[name]) for name in names]


# Greetings and thanks around a request: how people actually type, and they keep queries from repeating
# across train and test when the template space is small (a ticker symbol, a city).
_GREETINGS = ["", "", "", "", "Hi! ", "Hello! ", "Hey there. ", "Quick one. ", "Good morning! "]
_THANKS = ["", "", "", "", " Thanks!", " Thank you.", " Thanks in advance.", " Cheers."]


def _chatty(rng: random.Random, query: str, greet: bool = True) -> str:
    return (rng.choice(_GREETINGS) if greet else "") + query + rng.choice(_THANKS)


def _tool_trace(rng: random.Random, scenario: Scenario) -> tuple[list[dict], list[dict], dict]:
    query, dialogue = scenario(rng)
    query = _chatty(rng, query)
    used = list(dict.fromkeys(dialogue.calls))  # distinct, in call order
    distractors = rng.randint(1, min(3, MAX_TOOLS - len(used)))
    tools = _toolset(rng, used, len(used) + distractors)
    messages = [{"role": "user", "content": query}] + dialogue.messages
    meta = {"task": dialogue.calls[0], "kind": "tool", "steps": len(dialogue.calls)}
    return tools, messages, meta


def _no_tool_trace(rng: random.Random) -> tuple[list[dict], list[dict], dict]:
    query, answer, related = _no_tool(rng)
    query = _chatty(rng, query, greet=False)  # _no_tool already varies the opening
    related = related[: rng.randint(1, len(related))]
    tools = _toolset(rng, related, rng.randint(max(2, len(related)), MAX_TOOLS))
    messages = [{"role": "user", "content": query}, {"role": "assistant", "content": answer}]
    return tools, messages, {"task": "no_tool", "kind": "no_tool", "steps": 0}


def generate_traces(n: int, seed: int, no_tool_share: float = 0.2) -> list[dict]:
    """Return `n` canonical demo traces; identical for identical arguments."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not 0.0 <= no_tool_share <= 1.0:
        raise ValueError(f"no_tool_share must be within [0, 1], got {no_tool_share}")
    rng = random.Random(seed)
    # exact counts, then shuffled, so every sample size gets the requested mix rather than a noisy one
    n_no_tool = round(n * no_tool_share)
    n_multi = math.ceil((n - n_no_tool) * MULTI_STEP_SHARE)
    kinds = ["no_tool"] * n_no_tool + ["multi"] * n_multi + ["single"] * (n - n_no_tool - n_multi)
    rng.shuffle(kinds)
    traces = []
    for index, kind in enumerate(kinds):
        if kind == "no_tool":
            tools, messages, meta = _no_tool_trace(rng)
        else:
            tools, messages, meta = _tool_trace(rng, rng.choice(MULTI_STEP if kind == "multi" else SINGLE_STEP))
        traces.append({"id": f"demo-{index:06d}", "source": "demo", "tools": tools, "messages": messages, "meta": meta})
    return traces
