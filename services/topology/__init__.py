"""Where every message goes: the names of exchanges and queues, the declarations an actor
needs, and the addresses of delays, retries and dead letters.

- `naming`: every exchange, queue and routing key name (nobody formats one elsewhere);
- `declarations`: the RabbitMQ objects an actor needs, as data (`steps`);
- `delays`: the 28-level ladder of TTL queues that holds delayed messages.
"""
