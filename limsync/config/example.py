"""The commented example configuration written by ``limsync init``."""

EXAMPLE = """\
# limsync configuration. Every value can be overridden by an environment variable:
# LIMSYNC_DATABASE_URL, LIMSYNC_CONNECTORS__ALYX__PASSWORD, ... (nested with "__").

# Where the pipeline lives: SQLite (default), MariaDB/MySQL or PostgreSQL.
database_url = "sqlite:///limsync.db"
# database_url = "mysql+pymysql://sync@db.example.org/"        # password: LIMSYNC_DATABASE_URL
# database_url = "postgresql+psycopg://sync@db.example.org/lab"

# Optional: pipeline schema "subject" becomes database "lab_subject".
schema_prefix = "lab_"

[connectors.alyx]                       # an instance name; one type may have several
type = "alyx"
base_url = "https://alyx.example.org"   # may include a path prefix, e.g. https://host/api
username = "sync-bot"
# password: set LIMSYNC_CONNECTORS__ALYX__PASSWORD in the environment, not here.
# page_size = 250                       # at most 1000 (the server's cap)
# rate_limit_per_minute = 500           # Alyx allows 550 per minute per user

[connectors.alyx.streams.weighings]
delete_policy = "flag"                  # ignore | flag (default) | delete
# delete_threshold = 0.2                # refuse to delete more than 20% without --force

# Write a default table into your own table, renaming columns:
# [connectors.alyx.streams.subjects.tables."subject.subject"]
# table = "lab_subject.mouse"
# rename = { subject_nickname = "nickname" }

[[schedule]]
select = "alyx"
interval = "15m"
mode = "incremental"

[[schedule]]
select = "alyx"
cron = "0 2 * * *"                      # nightly full scan (UTC): catches deletes
"""
