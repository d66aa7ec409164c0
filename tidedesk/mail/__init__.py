"""E-mail, both ways: the durable outbox and its sender (``outbox``), the IMAP poller
(``poller``), and the pure parts they use: server URLs (``addresses``), reply tokens
(``tokens``), building a mail (``compose``), the retry schedule (``retry``) and reading a reply
(``incoming``). Nothing here runs on the chat path: the router only notes that a reply wants a
mail (one row), and the jobs here do the rest on their own clock."""
