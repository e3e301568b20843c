"""Mock tools for the demo traces: JSON-schema descriptions and deterministic executors.

Gives:
  TOOLS            the catalogue, a list of `{"name", "description", "parameters"}` dicts (fixed order)
  TOOLS_BY_NAME    the same, keyed by name
  execute(name, arguments) -> str
                   the tool's observation as a JSON string; the same arguments always give the same string
  safe_eval(expression) -> int | float
                   arithmetic on numbers with + - * / ** and parentheses only; anything else raises ValueError
and the small mock world the executors and the generator share: CITIES, STOCKS, USD_RATES, CURRENCY_NAMES,
LANGUAGES, PHRASES, WEB_FACTS, UNIT_NAMES, UNIT_KINDS.

Everything random here is seeded from a sha256 of the call, never from `hash()` (salted per process) or time.
"""

from __future__ import annotations

import ast
import hashlib
import json
import math
import operator
import random
from datetime import datetime, timedelta

# ---------------------------------------------------------------------------------------------------------
# The mock world
# ---------------------------------------------------------------------------------------------------------

# city: (IANA time zone, standard UTC offset, typical temperature in °C)
CITIES: dict[str, tuple[str, str, int]] = {
    "Oslo": ("Europe/Oslo", "+01:00", 6),
    "Berlin": ("Europe/Berlin", "+01:00", 10),
    "Paris": ("Europe/Paris", "+01:00", 12),
    "London": ("Europe/London", "+00:00", 11),
    "Madrid": ("Europe/Madrid", "+01:00", 15),
    "Rome": ("Europe/Rome", "+01:00", 16),
    "Lisbon": ("Europe/Lisbon", "+00:00", 17),
    "Amsterdam": ("Europe/Amsterdam", "+01:00", 10),
    "Stockholm": ("Europe/Stockholm", "+01:00", 7),
    "Helsinki": ("Europe/Helsinki", "+02:00", 6),
    "Athens": ("Europe/Athens", "+02:00", 19),
    "Istanbul": ("Europe/Istanbul", "+03:00", 15),
    "Reykjavik": ("Atlantic/Reykjavik", "+00:00", 5),
    "Cairo": ("Africa/Cairo", "+02:00", 22),
    "Nairobi": ("Africa/Nairobi", "+03:00", 19),
    "Cape Town": ("Africa/Johannesburg", "+02:00", 17),
    "Dubai": ("Asia/Dubai", "+04:00", 28),
    "Mumbai": ("Asia/Kolkata", "+05:30", 27),
    "Bangkok": ("Asia/Bangkok", "+07:00", 29),
    "Singapore": ("Asia/Singapore", "+08:00", 27),
    "Seoul": ("Asia/Seoul", "+09:00", 13),
    "Tokyo": ("Asia/Tokyo", "+09:00", 16),
    "Sydney": ("Australia/Sydney", "+10:00", 18),
    "Auckland": ("Pacific/Auckland", "+12:00", 15),
    "New York": ("America/New_York", "-05:00", 13),
    "Toronto": ("America/Toronto", "-05:00", 9),
    "Chicago": ("America/Chicago", "-06:00", 10),
    "Denver": ("America/Denver", "-07:00", 10),
    "Los Angeles": ("America/Los_Angeles", "-08:00", 18),
    "Mexico City": ("America/Mexico_City", "-06:00", 17),
    "São Paulo": ("America/Sao_Paulo", "-03:00", 20),
    "Buenos Aires": ("America/Argentina/Buenos_Aires", "-03:00", 18),
}

# symbol: (company, reference price in USD)
STOCKS: dict[str, tuple[str, float]] = {
    "AAPL": ("Apple", 190.0),
    "MSFT": ("Microsoft", 415.0),
    "GOOGL": ("Alphabet", 170.0),
    "AMZN": ("Amazon", 180.0),
    "NVDA": ("NVIDIA", 120.0),
    "TSLA": ("Tesla", 250.0),
    "META": ("Meta Platforms", 500.0),
    "NFLX": ("Netflix", 650.0),
    "IBM": ("IBM", 190.0),
    "INTC": ("Intel", 30.0),
    "KO": ("Coca-Cola", 62.0),
    "DIS": ("Disney", 100.0),
    "NKE": ("Nike", 80.0),
    "V": ("Visa", 275.0),
    "JPM": ("JPMorgan Chase", 200.0),
    "TM": ("Toyota", 180.0),
    "SAP": ("SAP", 200.0),
    "ADBE": ("Adobe", 480.0),
}

# units of each currency per US dollar: a frozen table, so conversions are reproducible
USD_RATES: dict[str, float] = {
    "USD": 1.0, "EUR": 0.92, "GBP": 0.79, "JPY": 151.0, "CHF": 0.89, "CAD": 1.36, "AUD": 1.52, "NZD": 1.66,
    "NOK": 10.7, "SEK": 10.5, "DKK": 6.87, "PLN": 3.98, "INR": 83.2, "CNY": 7.23, "KRW": 1350.0,
    "MXN": 17.0, "BRL": 5.05,
}
CURRENCY_NAMES: dict[str, str] = {
    "USD": "US dollars", "EUR": "euros", "GBP": "British pounds", "JPY": "Japanese yen", "CHF": "Swiss francs",
    "CAD": "Canadian dollars", "AUD": "Australian dollars", "NZD": "New Zealand dollars",
    "NOK": "Norwegian kroner", "SEK": "Swedish kronor", "DKK": "Danish kroner", "PLN": "Polish złoty",
    "INR": "Indian rupees", "CNY": "Chinese yuan", "KRW": "South Korean won", "MXN": "Mexican pesos",
    "BRL": "Brazilian reais",
}

LANGUAGES: dict[str, str] = {
    "en": "English", "es": "Spanish", "fr": "French", "de": "German", "it": "Italian", "pt": "Portuguese",
}

# English phrase -> its translations; the mock translator only knows these
PHRASES: dict[str, dict[str, str]] = {
    "Good morning": {"es": "Buenos días", "fr": "Bonjour", "de": "Guten Morgen", "it": "Buongiorno", "pt": "Bom dia"},
    "Thank you very much": {"es": "Muchas gracias", "fr": "Merci beaucoup", "de": "Vielen Dank",
                            "it": "Grazie mille", "pt": "Muito obrigado"},
    "Where is the train station?": {"es": "¿Dónde está la estación de tren?", "fr": "Où est la gare ?",
                                    "de": "Wo ist der Bahnhof?", "it": "Dov'è la stazione?",
                                    "pt": "Onde fica a estação de trem?"},
    "The meeting is moved to Friday": {"es": "La reunión se ha cambiado al viernes",
                                       "fr": "La réunion est reportée à vendredi",
                                       "de": "Das Meeting wird auf Freitag verschoben",
                                       "it": "La riunione è spostata a venerdì",
                                       "pt": "A reunião foi remarcada para sexta-feira"},
    "How much does this cost?": {"es": "¿Cuánto cuesta esto?", "fr": "Combien ça coûte ?",
                                 "de": "Wie viel kostet das?", "it": "Quanto costa questo?", "pt": "Quanto custa isto?"},
    "I would like a coffee, please": {"es": "Quisiera un café, por favor", "fr": "Je voudrais un café, s'il vous plaît",
                                      "de": "Ich hätte gern einen Kaffee, bitte", "it": "Vorrei un caffè, per favore",
                                      "pt": "Eu queria um café, por favor"},
    "Happy birthday": {"es": "Feliz cumpleaños", "fr": "Joyeux anniversaire", "de": "Alles Gute zum Geburtstag",
                       "it": "Buon compleanno", "pt": "Feliz aniversário"},
    "See you tomorrow": {"es": "Hasta mañana", "fr": "À demain", "de": "Bis morgen", "it": "A domani",
                         "pt": "Até amanhã"},
    "The package arrived yesterday": {"es": "El paquete llegó ayer", "fr": "Le colis est arrivé hier",
                                      "de": "Das Paket ist gestern angekommen", "it": "Il pacco è arrivato ieri",
                                      "pt": "O pacote chegou ontem"},
    "Please send me the report": {"es": "Por favor, envíame el informe", "fr": "Merci de m'envoyer le rapport",
                                  "de": "Bitte schick mir den Bericht", "it": "Per favore, mandami il rapporto",
                                  "pt": "Por favor, envie-me o relatório"},
    "I am allergic to peanuts": {"es": "Soy alérgico a los cacahuetes", "fr": "Je suis allergique aux arachides",
                                 "de": "Ich bin allergisch gegen Erdnüsse", "it": "Sono allergico alle arachidi",
                                 "pt": "Sou alérgico a amendoim"},
    "Where can I buy a ticket?": {"es": "¿Dónde puedo comprar un billete?", "fr": "Où puis-je acheter un billet ?",
                                  "de": "Wo kann ich eine Fahrkarte kaufen?", "it": "Dove posso comprare un biglietto?",
                                  "pt": "Onde posso comprar um bilhete?"},
    "The flight is delayed": {"es": "El vuelo está retrasado", "fr": "Le vol est retardé",
                              "de": "Der Flug hat Verspätung", "it": "Il volo è in ritardo", "pt": "O voo está atrasado"},
    "Welcome to the team": {"es": "Bienvenido al equipo", "fr": "Bienvenue dans l'équipe", "de": "Willkommen im Team",
                            "it": "Benvenuto nella squadra", "pt": "Bem-vindo à equipe"},
    "Good luck with your exam": {"es": "Buena suerte con tu examen", "fr": "Bonne chance pour ton examen",
                                 "de": "Viel Glück bei deiner Prüfung", "it": "Buona fortuna per il tuo esame",
                                 "pt": "Boa sorte no seu exame"},
    "Thank you for your help": {"es": "Gracias por tu ayuda", "fr": "Merci pour ton aide", "de": "Danke für deine Hilfe",
                                "it": "Grazie per il tuo aiuto", "pt": "Obrigado pela sua ajuda"},
}

# Search results the mock engine returns for known queries. `topic`, `answer` and `value` are for the
# generator: how a user names the fact, how the assistant states it, and (if numeric) the figure to convert.
WEB_FACTS: list[dict] = [
    {"query": "Mount Everest height", "topic": "the height of Mount Everest",
     "results": [("Mount Everest | Height, Location, & Facts | Britannica", "https://www.britannica.com/place/Mount-Everest",
                  "Mount Everest's summit stands 8,849 metres above sea level, as measured by a joint China–Nepal survey in 2020."),
                 ("Mount Everest - Wikipedia", "https://en.wikipedia.org/wiki/Mount_Everest",
                  "Mount Everest is Earth's highest mountain above sea level, in the Himalayas on the China–Nepal border.")],
     "answer": "Mount Everest is 8,849 m tall, according to the 2020 China–Nepal survey.", "value": (8849, "m", "ft")},
    {"query": "Eiffel Tower height", "topic": "how tall the Eiffel Tower is",
     "results": [("The Eiffel Tower in figures", "https://www.toureiffel.paris/en/the-monument/key-figures",
                  "The Eiffel Tower is 330 metres tall including its antennas and weighs about 10,100 tonnes."),
                 ("Eiffel Tower - Wikipedia", "https://en.wikipedia.org/wiki/Eiffel_Tower",
                  "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, completed in 1889.")],
     "answer": "The Eiffel Tower is 330 m tall including its antennas.", "value": (330, "m", "ft")},
    {"query": "Golden Gate Bridge length", "topic": "the length of the Golden Gate Bridge",
     "results": [("Golden Gate Bridge statistics", "https://www.goldengate.org/bridge/history-research/statistics-data/",
                  "The Golden Gate Bridge has a total length of 2,737 metres, with a main span of 1,280 metres."),
                 ("Golden Gate Bridge - Wikipedia", "https://en.wikipedia.org/wiki/Golden_Gate_Bridge",
                  "The Golden Gate Bridge is a suspension bridge spanning the Golden Gate strait, opened in 1937.")],
     "answer": "The Golden Gate Bridge is 2,737 m long in total, with a 1,280 m main span.", "value": (2737, "m", "mi")},
    {"query": "official marathon distance", "topic": "the official marathon distance",
     "results": [("Marathon | World Athletics", "https://worldathletics.org/disciplines/road-running/marathon",
                  "The official marathon distance is 42.195 kilometres, fixed in 1921 after the 1908 London Olympic course."),
                 ("Marathon - Wikipedia", "https://en.wikipedia.org/wiki/Marathon",
                  "The marathon is a long-distance foot race of 42.195 km, usually run as a road race.")],
     "answer": "An official marathon is 42.195 km long.", "value": (42.195, "km", "mi")},
    {"query": "Burj Khalifa height", "topic": "the height of the Burj Khalifa",
     "results": [("Burj Khalifa - Facts & Figures", "https://www.burjkhalifa.ae/en/the-tower/facts-figures/",
                  "At 828 metres, Burj Khalifa in Dubai has been the world's tallest building since 2010."),
                 ("Burj Khalifa - Wikipedia", "https://en.wikipedia.org/wiki/Burj_Khalifa",
                  "Burj Khalifa is a skyscraper in Dubai, United Arab Emirates, opened in January 2010.")],
     "answer": "The Burj Khalifa is 828 m tall, the tallest building in the world.", "value": (828, "m", "ft")},
    {"query": "Mount Kilimanjaro height", "topic": "the height of Mount Kilimanjaro",
     "results": [("Mount Kilimanjaro | Britannica", "https://www.britannica.com/place/Kilimanjaro",
                  "Kibo's Uhuru Peak, the summit of Mount Kilimanjaro in Tanzania, rises 5,895 metres above sea level."),
                 ("Mount Kilimanjaro - Wikipedia", "https://en.wikipedia.org/wiki/Mount_Kilimanjaro",
                  "Mount Kilimanjaro is a dormant volcano in Tanzania and the highest mountain in Africa.")],
     "answer": "Mount Kilimanjaro's summit, Uhuru Peak, is 5,895 m above sea level.", "value": (5895, "m", "ft")},
    {"query": "average distance Earth to Moon", "topic": "the average distance from the Earth to the Moon",
     "results": [("Moon Fact Sheet - NASA", "https://nssdc.gsfc.nasa.gov/planetary/factsheet/moonfact.html",
                  "The Moon orbits Earth at an average distance of about 384,400 kilometres."),
                 ("Moon - Wikipedia", "https://en.wikipedia.org/wiki/Moon",
                  "The Moon is Earth's only natural satellite, orbiting at an average distance of 384,400 km.")],
     "answer": "The Moon is on average about 384,400 km from Earth.", "value": (384400, "km", "mi")},
    {"query": "Lake Baikal depth", "topic": "how deep Lake Baikal is",
     "results": [("Lake Baikal | Britannica", "https://www.britannica.com/place/Lake-Baikal",
                  "Lake Baikal in Siberia is the deepest lake in the world, with a maximum depth of 1,642 metres."),
                 ("Lake Baikal - Wikipedia", "https://en.wikipedia.org/wiki/Lake_Baikal",
                  "Lake Baikal is a rift lake in Siberia and the largest freshwater lake by volume.")],
     "answer": "Lake Baikal is up to 1,642 m deep, the deepest lake in the world.", "value": (1642, "m", "ft")},
    {"query": "melting point of iron", "topic": "the melting point of iron",
     "results": [("Iron - Element information | RSC", "https://www.rsc.org/periodic-table/element/26/iron",
                  "Iron (Fe, atomic number 26) has a melting point of 1,538 °C and a boiling point of 2,861 °C."),
                 ("Iron - Wikipedia", "https://en.wikipedia.org/wiki/Iron",
                  "Iron is a chemical element with symbol Fe and atomic number 26, the most common element on Earth by mass.")],
     "answer": "Iron melts at 1,538 °C.", "value": (1538, "celsius", "fahrenheit")},
    {"query": "Sun surface temperature", "topic": "the surface temperature of the Sun",
     "results": [("Sun Fact Sheet - NASA", "https://nssdc.gsfc.nasa.gov/planetary/factsheet/sunfact.html",
                  "The Sun's photosphere has an effective temperature of about 5,772 K."),
                 ("Sun - Wikipedia", "https://en.wikipedia.org/wiki/Sun",
                  "The Sun is the star at the centre of the Solar System, a nearly perfect ball of hot plasma.")],
     "answer": "The Sun's visible surface is about 5,772 K.", "value": (5772, "kelvin", "celsius")},
    {"query": "Statue of Liberty height", "topic": "the height of the Statue of Liberty",
     "results": [("Statue of Liberty - Statistics (NPS)", "https://www.nps.gov/stli/learn/historyculture/statue-statistics.htm",
                  "From the ground to the tip of the torch, including its pedestal, the Statue of Liberty measures 93 metres."),
                 ("Statue of Liberty - Wikipedia", "https://en.wikipedia.org/wiki/Statue_of_Liberty",
                  "The Statue of Liberty is a colossal copper statue on Liberty Island in New York Harbor, dedicated in 1886.")],
     "answer": "The Statue of Liberty is 93 m tall from the ground to the torch, pedestal included.", "value": (93, "m", "ft")},
    {"query": "Olympic swimming pool volume", "topic": "the volume of an Olympic swimming pool",
     "results": [("Olympic-size swimming pool - Wikipedia", "https://en.wikipedia.org/wiki/Olympic-size_swimming_pool",
                  "An Olympic pool is 50 m by 25 m and at least 2 m deep, so it holds at least 2,500,000 litres of water."),
                 ("Facilities rules | World Aquatics", "https://www.worldaquatics.com/swimming/rules",
                  "Competition pools must be 50 metres long with ten lanes of 2.5 metres each.")],
     "answer": "An Olympic swimming pool holds at least 2,500,000 litres of water.", "value": (2500000, "l", "gal")},
    {"query": "Amazon River length", "topic": "the length of the Amazon River",
     "results": [("Amazon River | Britannica", "https://www.britannica.com/place/Amazon-River",
                  "The Amazon River flows about 6,400 kilometres from the Andes to the Atlantic Ocean."),
                 ("Amazon River - Wikipedia", "https://en.wikipedia.org/wiki/Amazon_River",
                  "The Amazon River in South America is the largest river by discharge volume of water in the world.")],
     "answer": "The Amazon River is about 6,400 km long.", "value": (6400, "km", "mi")},
    {"query": "Python 3.12 release date", "topic": "the release date of Python 3.12",
     "results": [("Python Release Python 3.12.0", "https://www.python.org/downloads/release/python-3120/",
                  "Python 3.12.0 was released on October 2, 2023, with better error messages and faster comprehensions."),
                 ("What's New In Python 3.12", "https://docs.python.org/3/whatsnew/3.12.html",
                  "This article explains the new features in Python 3.12, compared to 3.11.")],
     "answer": "Python 3.12.0 was released on October 2, 2023."},
    {"query": "first iPhone release date", "topic": "when the first iPhone went on sale",
     "results": [("iPhone (1st generation) - Wikipedia", "https://en.wikipedia.org/wiki/IPhone_(1st_generation)",
                  "The first iPhone went on sale in the United States on June 29, 2007."),
                 ("Apple Reinvents the Phone with iPhone", "https://www.apple.com/newsroom/2007/01/09Apple-Reinvents-the-Phone-with-iPhone/",
                  "Apple introduced iPhone at Macworld on January 9, 2007.")],
     "answer": "The first iPhone went on sale in the US on June 29, 2007, after being announced on January 9."},
    {"query": "Rust 1.0 release date", "topic": "when Rust 1.0 came out",
     "results": [("Announcing Rust 1.0 | Rust Blog", "https://blog.rust-lang.org/2015/05/15/Rust-1.0.html",
                  "Rust 1.0, the first stable release of the language, was announced on May 15, 2015."),
                 ("Rust (programming language) - Wikipedia", "https://en.wikipedia.org/wiki/Rust_(programming_language)",
                  "Rust is a general-purpose language emphasising performance, type safety and concurrency.")],
     "answer": "Rust 1.0 was released on May 15, 2015."},
    {"query": "first Linux kernel release", "topic": "when the first Linux kernel was released",
     "results": [("Linux kernel version history - Wikipedia", "https://en.wikipedia.org/wiki/Linux_kernel_version_history",
                  "Linus Torvalds released Linux 0.01, the first version of the kernel, on 17 September 1991."),
                 ("History of Linux - Wikipedia", "https://en.wikipedia.org/wiki/History_of_Linux",
                  "Linux began in 1991 as a personal project by Finnish student Linus Torvalds.")],
     "answer": "Linus Torvalds released the first Linux kernel, version 0.01, on 17 September 1991."},
    {"query": "Wikipedia launch date founders", "topic": "when Wikipedia was launched and by whom",
     "results": [("Wikipedia - Wikipedia", "https://en.wikipedia.org/wiki/Wikipedia",
                  "Wikipedia was launched by Jimmy Wales and Larry Sanger on January 15, 2001."),
                 ("History of Wikipedia", "https://en.wikipedia.org/wiki/History_of_Wikipedia",
                  "Wikipedia grew out of Nupedia, an earlier expert-written online encyclopedia.")],
     "answer": "Wikipedia was launched on January 15, 2001 by Jimmy Wales and Larry Sanger."},
    {"query": "speed of light in vacuum", "topic": "the speed of light",
     "results": [("Speed of light - NIST", "https://physics.nist.gov/cgi-bin/cuu/Value?c",
                  "The speed of light in vacuum is exactly 299,792,458 metres per second."),
                 ("Speed of light - Wikipedia", "https://en.wikipedia.org/wiki/Speed_of_light",
                  "The speed of light in vacuum, c, is a universal physical constant.")],
     "answer": "Light travels at exactly 299,792,458 m/s in a vacuum."},
]
_WEB_INDEX = {fact["query"].lower(): fact for fact in WEB_FACTS}

# unit -> (kind, factor to the kind's base unit); temperatures are converted by formula
UNIT_NAMES: dict[str, str] = {
    "m": "meters", "km": "kilometers", "cm": "centimeters", "mm": "millimeters", "mi": "miles", "ft": "feet",
    "in": "inches", "kg": "kilograms", "g": "grams", "lb": "pounds", "oz": "ounces", "l": "liters",
    "ml": "milliliters", "gal": "US gallons", "celsius": "degrees Celsius", "fahrenheit": "degrees Fahrenheit",
    "kelvin": "kelvin",
}
_UNITS: dict[str, tuple[str, float]] = {
    "m": ("length", 1.0), "km": ("length", 1000.0), "cm": ("length", 0.01), "mm": ("length", 0.001),
    "mi": ("length", 1609.344), "ft": ("length", 0.3048), "in": ("length", 0.0254),
    "kg": ("mass", 1.0), "g": ("mass", 0.001), "lb": ("mass", 0.45359237), "oz": ("mass", 0.028349523125),
    "l": ("volume", 1.0), "ml": ("volume", 0.001), "gal": ("volume", 3.785411784),
    "celsius": ("temperature", 1.0), "fahrenheit": ("temperature", 1.0), "kelvin": ("temperature", 1.0),
}
UNIT_KINDS: dict[str, list[str]] = {}
for _unit, (_kind, _) in _UNITS.items():
    UNIT_KINDS.setdefault(_kind, []).append(_unit)

_ISSUE_TITLES = [
    "Crash when the config file has an empty section", "Docs: broken link in the installation guide",
    "Add support for Python 3.13", "Memory leak in streaming mode", "Flaky test on the Windows CI runner",
    "Type hints missing for the public API", "Error message is unclear when the token has expired",
    "Regression: import time doubled in the last release", "Feature request: export results as CSV",
    "Wrong timezone handling in date parsing", "Segfault when closing the connection twice",
    "Deprecation warnings flood the test output", "Support for ARM64 wheels", "Race condition in the cache layer",
]
_PR_TITLES = [
    "Fix off-by-one error in pagination", "Bump dependencies to the latest patch versions",
    "Add retry with exponential backoff to the HTTP client", "Refactor the config loader",
    "Docs: add a quickstart example", "Speed up JSON serialisation by 30%", "Drop support for end-of-life Python",
    "Add integration tests for the CLI", "Fix typo in the README", "Handle empty responses gracefully",
    "Add dark mode to the docs site", "Cache compiled regular expressions",
]
_GITHUB_USERS = ["octocat", "mkhan", "lgarcia", "tnguyen", "abergstrom", "pschmidt", "yuki-t", "rdasilva",
                 "jmorales", "cwright", "ivanov-d", "sophie-l"]
# adjectives, so answers read "It's 4 °C and overcast"
_WEATHER_CONDITIONS = ["clear", "sunny", "partly cloudy", "overcast", "rainy", "drizzly", "foggy", "windy"]
_COLD_CONDITIONS = ["snowy", "overcast", "clear", "foggy"]

# ---------------------------------------------------------------------------------------------------------
# Schemas
# ---------------------------------------------------------------------------------------------------------

TOOLS: list[dict] = [
    {"name": "get_weather",
     "description": "Get the current weather for a city: temperature, conditions, humidity and wind.",
     "parameters": {"type": "object",
                    "properties": {"city": {"type": "string", "description": "City name, e.g. Oslo"},
                                   "unit": {"type": "string", "enum": ["celsius", "fahrenheit"],
                                            "description": "Temperature unit (default celsius)"}},
                    "required": ["city"]}},
    {"name": "github_api",
     "description": "Query the GitHub REST API for a repository's issues, pull requests or releases.",
     "parameters": {"type": "object",
                    "properties": {"owner": {"type": "string", "description": "Repository owner (user or organisation)"},
                                   "repo": {"type": "string", "description": "Repository name"},
                                   "resource": {"type": "string", "enum": ["issues", "pulls", "releases"]},
                                   "state": {"type": "string", "enum": ["open", "closed", "all"],
                                             "description": "Filter issues or pulls by state (default open)"},
                                   "per_page": {"type": "integer", "minimum": 1, "maximum": 10,
                                                "description": "How many items to return (default 3)"}},
                    "required": ["owner", "repo", "resource"]}},
    {"name": "calculator",
     "description": "Evaluate an arithmetic expression with + - * / ** and parentheses.",
     "parameters": {"type": "object",
                    "properties": {"expression": {"type": "string", "description": "e.g. (12 + 30) * 1.5"}},
                    "required": ["expression"]}},
    {"name": "web_search",
     "description": "Search the web and return the top results with title, URL and snippet.",
     "parameters": {"type": "object",
                    "properties": {"query": {"type": "string", "description": "Search terms"},
                                   "num_results": {"type": "integer", "minimum": 1, "maximum": 10,
                                                   "description": "How many results to return (default 2)"}},
                    "required": ["query"]}},
    {"name": "create_calendar_event",
     "description": "Create an event in the user's calendar.",
     "parameters": {"type": "object",
                    "properties": {"title": {"type": "string", "description": "Event title"},
                                   "date": {"type": "string", "description": "Date as YYYY-MM-DD"},
                                   "time": {"type": "string", "description": "Start time as HH:MM (24-hour)"},
                                   "duration_minutes": {"type": "integer", "minimum": 5, "maximum": 720},
                                   "attendees": {"type": "array", "items": {"type": "string"},
                                                 "description": "Email addresses to invite"}},
                    "required": ["title", "date", "time", "duration_minutes"]}},
    {"name": "currency_convert",
     "description": "Convert an amount of money from one currency to another at the current exchange rate.",
     "parameters": {"type": "object",
                    "properties": {"amount": {"type": "number", "description": "Amount to convert"},
                                   "from_currency": {"type": "string", "enum": list(USD_RATES),
                                                     "description": "ISO 4217 code of the source currency"},
                                   "to_currency": {"type": "string", "enum": list(USD_RATES),
                                                   "description": "ISO 4217 code of the target currency"}},
                    "required": ["amount", "from_currency", "to_currency"]}},
    {"name": "unit_convert",
     "description": "Convert a value between units of length, mass, volume or temperature.",
     "parameters": {"type": "object",
                    "properties": {"value": {"type": "number"},
                                   "from_unit": {"type": "string", "enum": list(_UNITS)},
                                   "to_unit": {"type": "string", "enum": list(_UNITS)}},
                    "required": ["value", "from_unit", "to_unit"]}},
    {"name": "stock_quote",
     "description": "Get the latest price and daily change of a stock by its ticker symbol.",
     "parameters": {"type": "object",
                    "properties": {"symbol": {"type": "string", "description": "Ticker symbol, e.g. AAPL"}},
                    "required": ["symbol"]}},
    {"name": "translate",
     "description": "Translate text into another language.",
     "parameters": {"type": "object",
                    "properties": {"text": {"type": "string", "description": "Text to translate"},
                                   "target_language": {"type": "string", "enum": list(LANGUAGES),
                                                       "description": "ISO 639-1 code of the target language"},
                                   "source_language": {"type": "string", "enum": list(LANGUAGES),
                                                       "description": "ISO 639-1 code of the source (detected if omitted)"}},
                    "required": ["text", "target_language"]}},
    {"name": "send_email",
     "description": "Send an email from the user's account.",
     "parameters": {"type": "object",
                    "properties": {"to": {"type": "string", "description": "Recipient email address"},
                                   "subject": {"type": "string"},
                                   "body": {"type": "string"},
                                   "cc": {"type": "array", "items": {"type": "string"}}},
                    "required": ["to", "subject", "body"]}},
    {"name": "get_time",
     "description": "Get the current local time and time zone of a city.",
     "parameters": {"type": "object",
                    "properties": {"city": {"type": "string", "description": "City name, e.g. Tokyo"}},
                    "required": ["city"]}},
]
TOOLS_BY_NAME: dict[str, dict] = {tool["name"]: tool for tool in TOOLS}

# ---------------------------------------------------------------------------------------------------------
# Safe arithmetic
# ---------------------------------------------------------------------------------------------------------

_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.Pow: operator.pow}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}


def safe_eval(expression: str) -> int | float:
    """Evaluate arithmetic on numbers with + - * / ** and parentheses; raise ValueError on anything else."""
    if not isinstance(expression, str) or len(expression) > 200:
        raise ValueError("expression must be a string of at most 200 characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError:
        raise ValueError(f"not a valid arithmetic expression: {expression!r}") from None
    value = _eval_node(tree.body)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("result is not a finite number")
        value = round(value, 10)  # hides binary noise such as 0.1 + 0.2 = 0.30000000000000004
        if value.is_integer() and abs(value) < 2**53:
            value = int(value)
    return value


def _eval_node(node: ast.AST) -> int | float:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_eval_node(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _eval_node(node.left), _eval_node(node.right)
        # bound powers so a short expression like 9**9**9 cannot hang the process
        if isinstance(node.op, ast.Pow) and (abs(right) > 100 or abs(left) > 1e6):
            raise ValueError("power too large")
        try:
            result = _BINARY[type(node.op)](left, right)
        except ZeroDivisionError:
            raise ValueError("division by zero") from None
        except OverflowError:
            raise ValueError("result too large") from None
        if isinstance(result, complex):
            raise ValueError("result is not a real number")
        if abs(result) > 1e100:
            raise ValueError("result too large")
        return result
    raise ValueError(f"unsupported element in expression: {type(node).__name__}")

# ---------------------------------------------------------------------------------------------------------
# Executors
# ---------------------------------------------------------------------------------------------------------


def _rng_for(name: str, arguments: dict) -> random.Random:
    key = json.dumps([name, arguments], sort_keys=True, ensure_ascii=False)
    return random.Random(int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big"))


def _short_id(prefix: str, name: str, arguments: dict) -> str:
    key = json.dumps([name, arguments], sort_keys=True, ensure_ascii=False)
    return prefix + hashlib.sha256(key.encode("utf-8")).hexdigest()[:10]


def _weather(args: dict, rng: random.Random) -> dict:
    city = args["city"]
    base = CITIES[city][2] if city in CITIES else 15
    temp_c = base + rng.randint(-6, 6)
    conditions = rng.choice(_COLD_CONDITIONS if temp_c <= 1 else _WEATHER_CONDITIONS)
    unit = args.get("unit", "celsius")
    temperature = round(temp_c * 9 / 5 + 32) if unit == "fahrenheit" else temp_c
    return {"city": city, "temperature": temperature, "unit": unit, "conditions": conditions,
            "humidity_pct": rng.randint(30, 95), "wind_kph": rng.randint(0, 40)}


def _github(args: dict, rng: random.Random) -> dict:
    repository = f"{args['owner']}/{args['repo']}"
    count = min(args.get("per_page", 3), 3)  # keeps observations short; the API would page
    if args["resource"] == "releases":
        major, minor, patch = rng.randint(1, 5), rng.randint(0, 30), rng.randint(0, 9)
        day = datetime(2025, 6, 30) - timedelta(days=rng.randint(0, 60))
        items = []
        for _ in range(count):
            items.append({"tag": f"v{major}.{minor}.{patch}", "published_at": day.strftime("%Y-%m-%d")})
            patch, minor = (patch - 1, minor) if patch > 0 else (9, max(minor - 1, 0))
            day -= timedelta(days=rng.randint(7, 40))
        return {"repository": repository, "resource": "releases", "items": items}
    state = args.get("state", "open")
    titles = _PR_TITLES if args["resource"] == "pulls" else _ISSUE_TITLES
    number = rng.randint(800, 30000)
    items = []
    for title in rng.sample(titles, count):
        items.append({"number": number, "title": title, "author": rng.choice(_GITHUB_USERS)})
        number -= rng.randint(1, 40)
    total = rng.randint(3, 400) if state == "open" else rng.randint(300, 9000)
    return {"repository": repository, "resource": args["resource"], "state": state, "total_count": total,
            "items": items}


def _calculator(args: dict, rng: random.Random) -> dict:
    try:
        return {"expression": args["expression"], "result": safe_eval(args["expression"])}
    except ValueError as exc:
        return {"expression": args["expression"], "error": str(exc)}


def _web_search(args: dict, rng: random.Random) -> dict:
    fact = _WEB_INDEX.get(args["query"].strip().lower())
    if fact is None:
        slug = args["query"].strip().replace(" ", "_")
        rows = [(f"{args['query']} - Wikipedia", f"https://en.wikipedia.org/wiki/{slug}",
                 f"An overview of {args['query']}.")]
    else:
        rows = fact["results"]
    rows = rows[: args.get("num_results", 2)]
    return {"query": args["query"], "results": [{"title": t, "url": u, "snippet": s} for t, u, s in rows]}


def _calendar(args: dict, rng: random.Random) -> dict:
    start = datetime.strptime(f"{args['date']} {args['time']}", "%Y-%m-%d %H:%M")
    end = start + timedelta(minutes=args["duration_minutes"])
    event = {"status": "created", "event_id": _short_id("evt_", "create_calendar_event", args),
             "title": args["title"], "start": start.strftime("%Y-%m-%dT%H:%M"), "end": end.strftime("%Y-%m-%dT%H:%M")}
    if args.get("attendees"):
        event["invited"] = list(args["attendees"])
    return event


def _currency(args: dict, rng: random.Random) -> dict:
    src, dst = args["from_currency"], args["to_currency"]
    rate = round(USD_RATES[dst] / USD_RATES[src], 4)
    return {"amount": args["amount"], "from": src, "to": dst, "rate": rate,
            "converted": round(args["amount"] * rate, 2)}


def convert_units(value: float, from_unit: str, to_unit: str) -> float:
    """Convert between units of the same kind; raise ValueError for unknown or mismatched units."""
    if from_unit not in _UNITS or to_unit not in _UNITS:
        raise ValueError("unknown unit")
    kind = _UNITS[from_unit][0]
    if _UNITS[to_unit][0] != kind:
        raise ValueError(f"cannot convert {from_unit} to {to_unit}")
    if kind == "temperature":
        celsius = {"celsius": value, "fahrenheit": (value - 32) * 5 / 9, "kelvin": value - 273.15}[from_unit]
        result = {"celsius": celsius, "fahrenheit": celsius * 9 / 5 + 32, "kelvin": celsius + 273.15}[to_unit]
    else:
        result = value * _UNITS[from_unit][1] / _UNITS[to_unit][1]
    result = round(result, 4)
    return int(result) if result.is_integer() else result


def _units(args: dict, rng: random.Random) -> dict:
    try:
        result = convert_units(args["value"], args["from_unit"], args["to_unit"])
    except ValueError as exc:
        return {"error": str(exc)}
    return {"value": args["value"], "from_unit": args["from_unit"], "to_unit": args["to_unit"], "result": result}


def _stock(args: dict, rng: random.Random) -> dict:
    symbol = args["symbol"].strip().upper()
    if symbol not in STOCKS:
        return {"error": f"unknown symbol {symbol}"}
    company, price = STOCKS[symbol]
    return {"symbol": symbol, "company": company, "price": round(price * (1 + rng.uniform(-0.06, 0.06)), 2),
            "currency": "USD", "change_pct": round(rng.uniform(-3.0, 3.0), 2)}


def _translate(args: dict, rng: random.Random) -> dict:
    text, target = args["text"].strip(), args["target_language"]
    for english, translations in PHRASES.items():
        versions = {"en": english, **translations}
        for lang, version in versions.items():
            if version.lower() == text.lower():
                return {"translated_text": versions[target], "source_language": lang, "target_language": target}
    # the mock only knows its phrase book; mark anything else instead of inventing a translation
    return {"translated_text": f"[{target}] {text}", "source_language": args.get("source_language", "en"),
            "target_language": target}


def _email(args: dict, rng: random.Random) -> dict:
    return {"status": "sent", "message_id": _short_id("msg_", "send_email", args), "to": args["to"]}


def _time(args: dict, rng: random.Random) -> dict:
    if args["city"] not in CITIES:
        return {"error": f"unknown city {args['city']}"}
    zone, offset, _ = CITIES[args["city"]]
    return {"city": args["city"], "timezone": zone, "utc_offset": offset,
            "local_time": f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}"}


_EXECUTORS = {
    "get_weather": _weather, "github_api": _github, "calculator": _calculator, "web_search": _web_search,
    "create_calendar_event": _calendar, "currency_convert": _currency, "unit_convert": _units,
    "stock_quote": _stock, "translate": _translate, "send_email": _email, "get_time": _time,
}


def execute(name: str, arguments: dict) -> str:
    """Run the mock tool `name` on `arguments` and return its observation as a JSON string."""
    if name not in _EXECUTORS:
        raise KeyError(f"unknown tool {name!r}")
    observation = _EXECUTORS[name](arguments, _rng_for(name, arguments))
    return json.dumps(observation, ensure_ascii=False)
