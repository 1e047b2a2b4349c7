"""The bench's database-like workload: a real Redis holding text keys and values, as a shop's cache would.

Records come from a seeded generator, so every run holds the same data: customer profiles (JSON: names, e-mail,
address, dates, counters), orders (JSON with items and prices) and sessions (a random 32-hex token and a few
fields) in the ratio 6:3:1. Redis keeps them in its own structures (dict entries, object headers, jemalloc's size
classes), so the container's memory is what a database's is, not text alone. They are loaded through
``redis-cli --pipe`` before the move; Redis's own digest of the whole data set (``DEBUG DIGEST``) before and after
says whether every key and value arrived.
"""
from __future__ import annotations

import json
import random
from collections.abc import Iterator

IMAGE = "cmlab-db:latest"
# the server, as the workload runs it: no persistence (memory only), DEBUG DIGEST allowed, reachable in its netns
SERVER = ("redis-server --save '' --appendonly no --enable-debug-command yes --protected-mode no "
          "--bind 0.0.0.0 --port 6379")
RECORD_BYTES = 400   # measured: Redis's used_memory per record of these (value ~260 bytes, key, its structures)
SEED = 21

FIRST = ("Anna", "Ben", "Chloé", "David", "Emma", "Felix", "Greta", "Hugo", "Ines", "Jonas", "Karin", "Luca",
         "Maya", "Noah", "Olga", "Paul", "Rosa", "Sami", "Tara", "Umut", "Vera", "Wim", "Yara", "Zoe")
LAST = ("Schmidt", "Müller", "Dubois", "Rossi", "García", "Nowak", "Jensen", "Novák", "Silva", "Kowalski",
        "Martin", "Bianchi", "Fischer", "Lopez", "Horvat", "Berg", "Weber", "Moreau", "Costa", "Kaya")
CITIES = (("Berlin", "DE", "10115"), ("Lyon", "FR", "69002"), ("Milano", "IT", "20121"), ("Madrid", "ES", "28013"),
          ("Kraków", "PL", "31-008"), ("Aarhus", "DK", "8000"), ("Brno", "CZ", "602 00"), ("Porto", "PT", "4000"),
          ("Wien", "AT", "1010"), ("Gent", "BE", "9000"), ("Zürich", "CH", "8001"), ("Tallinn", "EE", "10111"))
STREETS = ("Hauptstraße", "Rue de la Paix", "Via Roma", "Calle Mayor", "ul. Floriańska", "Strøget", "Kingsway",
           "Rua Augusta", "Ringstraße", "Korenmarkt")
PRODUCTS = (("espresso machine", "kitchen", 249.0), ("garden hose 25 m", "garden", 34.9),
            ("paperback novel", "books", 12.5), ("wooden train set", "toys", 59.0), ("chef's knife", "kitchen",
            89.0), ("seed starter kit", "garden", 19.95), ("atlas of Europe", "books", 42.0),
            ("puzzle 1000 pieces", "toys", 17.99), ("cast iron pan", "kitchen", 64.5), ("bird feeder", "garden", 24.0))
STATUS = ("active", "active", "active", "pending", "suspended")
ORDER_STATUS = ("paid", "shipped", "delivered", "delivered", "returned")
TAGS = ("newsletter", "vip", "b2b", "returning", "mobile", "gift-card")


def _date(rng: random.Random, year: int) -> str:
    return (f"{year}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T{rng.randint(0, 23):02d}:"
            f"{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}Z")


def records(n: int, seed: int = SEED) -> Iterator[tuple[str, str]]:
    """``n`` (key, value) pairs, the same for the same ``n`` and ``seed``."""
    rng = random.Random(seed)
    for i in range(n):
        kind = i % 10
        first, last = rng.choice(FIRST), rng.choice(LAST)
        city, country, zip_code = rng.choice(CITIES)
        if kind < 6:
            value = {"id": i, "name": f"{first} {last}",
                     "email": f"{first.lower()}.{last.lower()}{rng.randint(1, 99)}@mail.example",
                     "address": {"street": f"{rng.randint(1, 180)} {rng.choice(STREETS)}", "zip": zip_code,
                                 "city": city, "country": country},
                     "created": _date(rng, rng.randint(2015, 2025)), "last_login": _date(rng, 2026),
                     "orders": rng.randint(0, 140), "spent": round(rng.uniform(0, 9000), 2),
                     "status": rng.choice(STATUS), "tags": rng.sample(TAGS, rng.randint(0, 3)),
                     "locale": f"{country.lower()}_{country}"}
            yield f"user:{i:07d}", json.dumps(value, ensure_ascii=False, separators=(",", ":"))
        elif kind < 9:
            items = []
            for _ in range(rng.randint(1, 4)):
                name, category, price = rng.choice(PRODUCTS)
                items.append({"sku": f"{category[:3].upper()}-{rng.randint(1000, 9999)}", "name": name,
                              "qty": rng.randint(1, 3), "price": price})
            value = {"order": i, "customer": f"user:{rng.randrange(max(i, 1)):07d}", "items": items,
                     "currency": "EUR", "total": round(sum(it["qty"] * it["price"] for it in items), 2),
                     "status": rng.choice(ORDER_STATUS), "placed": _date(rng, 2026)}
            yield f"order:{i:07d}", json.dumps(value, ensure_ascii=False, separators=(",", ":"))
        else:
            token = f"{rng.getrandbits(128):032x}"
            value = {"user": f"user:{rng.randrange(max(i, 1)):07d}", "ip": f"198.51.100.{rng.randint(1, 254)}",
                     "agent": rng.choice(("Firefox/133.0", "Chrome/131.0", "Safari/18.1")),
                     "expires": _date(rng, 2026), "cart": rng.randint(0, 6)}
            yield f"session:{token}", json.dumps(value, separators=(",", ":"))


def count_for(mib: int) -> int:
    """How many records fill about ``mib`` MiB of Redis's memory."""
    return max(1, mib * 2**20 // RECORD_BYTES)


def resp(pairs: Iterator[tuple[str, str]], batch: int = 5000) -> Iterator[bytes]:
    """SET commands in Redis's wire protocol, as ``redis-cli --pipe`` takes them, ``batch`` at a time."""
    out = []
    for n, (key, value) in enumerate(pairs, 1):
        k, v = key.encode(), value.encode()
        out.append(b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(k), k, len(v), v))
        if n % batch == 0:
            yield b"".join(out)
            out = []
    if out:
        yield b"".join(out)
