#include <sqlite3.h>

/* SQLITE_TRANSIENT is a cast macro Swift cannot import: bind text through this. */
static inline int ca_sqlite_bind_text(sqlite3_stmt *stmt, int index, const char *text) {
  return sqlite3_bind_text(stmt, index, text, -1, SQLITE_TRANSIENT);
}
