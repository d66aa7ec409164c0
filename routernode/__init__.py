"""Router nodes: consume what chat nodes publish, store history in batches, route chats."""
