/* The memory floor of the agent's libraries: the least a process can do with what the agent
 * must map at idle, and nothing else. It opens a SQLite database in WAL mode and writes one
 * row (the instance store), logs in to RabbitMQ and consumes from a queue (librabbitmq, which
 * brings OpenSSL), loads a hypervisor plugin with dlopen, and, built with -DWITH_LIBVIRT,
 * holds a test:///default libvirt connection. Benchmarks/smaps.py builds it with a Swift
 * main (library_floor.swift) and compares the agent's idle memory with it.
 *
 * Environment: CA_FLOOR_USER, CA_FLOOR_PASSWORD (the broker), CA_FLOOR_DB (a file path),
 * CA_FLOOR_PLUGIN (a plugin's .so, optional). */
#include <amqp.h>
#include <amqp_tcp_socket.h>
#include <dlfcn.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#ifdef WITH_LIBVIRT
#include <libvirt/libvirt.h>
#endif

static const char *env(const char *name) {
    const char *v = getenv(name);
    return v ? v : "";
}

/* Returns 0, or a short reason the floor could not be set up. */
const char *library_floor_setup(void) {
    sqlite3 *db;
    if (sqlite3_open(env("CA_FLOOR_DB"), &db) != SQLITE_OK) return "sqlite3_open failed";
    if (sqlite3_exec(db, "PRAGMA journal_mode=WAL; CREATE TABLE IF NOT EXISTS r(k TEXT PRIMARY KEY, v TEXT);"
                         "INSERT OR REPLACE INTO r VALUES('instance', '{}'); SELECT v FROM r;", 0, 0, 0) != SQLITE_OK)
        return "sqlite3_exec failed";

    amqp_connection_state_t c = amqp_new_connection();
    amqp_socket_t *s = amqp_tcp_socket_new(c);
    if (!s || amqp_socket_open(s, "127.0.0.1", 5672) != AMQP_STATUS_OK) return "cannot connect to 127.0.0.1:5672";
    amqp_rpc_reply_t r = amqp_login(c, "/", 0, 131072, 30, AMQP_SASL_METHOD_PLAIN,
                                    env("CA_FLOOR_USER"), env("CA_FLOOR_PASSWORD"));
    if (r.reply_type != AMQP_RESPONSE_NORMAL) return "AMQP login failed";
    if (!amqp_channel_open(c, 1)) return "channel.open failed";
    amqp_queue_declare_ok_t *q = amqp_queue_declare(c, 1, amqp_empty_bytes, 0, 0, 1, 1, amqp_empty_table);
    if (!q) return "queue.declare failed";
    if (!amqp_basic_consume(c, 1, q->queue, amqp_empty_bytes, 0, 0, 1, amqp_empty_table)) return "basic.consume failed";

    const char *plugin = env("CA_FLOOR_PLUGIN");
    if (*plugin && !dlopen(plugin, RTLD_NOW | RTLD_LOCAL)) return "dlopen of the plugin failed";
#ifdef WITH_LIBVIRT
    if (!virConnectOpen("test:///default")) return "virConnectOpen(test:///default) failed";
#endif
    return 0;
}
