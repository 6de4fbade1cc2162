"""Source: where raw elements come from and go back to: Redis keys, the queue (claim, lease,
hand-over), queue elements and their job ids, the one producer of elements, operator tools
(admin) and the chat client. A source moves elements; it never interprets a payload."""
