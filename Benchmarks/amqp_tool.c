/*
 * amqp_tool — the benchmarks' bare librabbitmq helper.
 *
 *   amqp_tool publish <routing_key> <count> <template_file>
 *       declares queue <routing_key> bound to the "nova" topic exchange by its own name
 *       and publishes <count> copies of the template, replacing the 32-character run
 *       "UNIQUEID0000000000000000000000000" with a distinct hex counter (the agent and
 *       oslo.messaging both drop repeated _unique_ids).
 *   amqp_tool rtt <count>
 *       the floor of any call's latency: publish a small message to a queue this same
 *       connection consumes and wait for it, <count> times; prints p50/p99 in ms. A call
 *       crosses the broker twice (request, reply), so its floor is about twice this.
 *   amqp_tool drain <queue> <count> <prefetch>
 *       the floor any consumer is measured against: basic.qos <prefetch>, consume, ack
 *       each message, nothing else; prints {"messages": n, "seconds": s, "per_s": r}.
 *
 * Broker: 127.0.0.1:5672, user/password from AMQP_USER / AMQP_PASSWORD (guest/guest).
 */
#include <amqp.h>
#include <amqp_tcp_socket.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void die(const char *what, amqp_rpc_reply_t r) {
  if (r.reply_type != AMQP_RESPONSE_NORMAL) {
    fprintf(stderr, "amqp_tool: %s failed (reply type %d)\n", what, r.reply_type);
    exit(1);
  }
}

static amqp_connection_state_t connect_broker(void) {
  const char *user = getenv("AMQP_USER") ? getenv("AMQP_USER") : "guest";
  const char *pass = getenv("AMQP_PASSWORD") ? getenv("AMQP_PASSWORD") : "guest";
  amqp_connection_state_t c = amqp_new_connection();
  amqp_socket_t *s = amqp_tcp_socket_new(c);
  if (!s || amqp_socket_open(s, "127.0.0.1", 5672) != AMQP_STATUS_OK) {
    fprintf(stderr, "amqp_tool: cannot connect to 127.0.0.1:5672\n");
    exit(1);
  }
  die("login", amqp_login(c, "/", 0, 131072, 0, AMQP_SASL_METHOD_PLAIN, user, pass));
  amqp_channel_open(c, 1);
  die("channel.open", amqp_get_rpc_reply(c));
  return c;
}

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int publish(const char *key, long count, const char *template_file) {
  FILE *f = fopen(template_file, "rb");
  if (!f) { perror(template_file); return 1; }
  static char body[1 << 20];
  size_t len = fread(body, 1, sizeof body, f);
  fclose(f);
  char *slot = strstr(body, "UNIQUEID0000000000000000000000000");
  amqp_connection_state_t c = connect_broker();
  amqp_exchange_declare(c, 1, amqp_cstring_bytes("nova"), amqp_cstring_bytes("topic"), 0, 0, 0, 0, amqp_empty_table);
  die("exchange.declare", amqp_get_rpc_reply(c));
  amqp_queue_declare(c, 1, amqp_cstring_bytes(key), 0, 0, 0, 0, amqp_empty_table);
  die("queue.declare", amqp_get_rpc_reply(c));
  amqp_queue_bind(c, 1, amqp_cstring_bytes(key), amqp_cstring_bytes("nova"), amqp_cstring_bytes(key), amqp_empty_table);
  die("queue.bind", amqp_get_rpc_reply(c));
  amqp_basic_properties_t p;
  memset(&p, 0, sizeof p);
  p._flags = AMQP_BASIC_CONTENT_TYPE_FLAG | AMQP_BASIC_CONTENT_ENCODING_FLAG | AMQP_BASIC_DELIVERY_MODE_FLAG;
  p.content_type = amqp_cstring_bytes("application/json");
  p.content_encoding = amqp_cstring_bytes("utf-8");
  p.delivery_mode = 2;
  for (long i = 0; i < count; i++) {
    if (slot) {
      char hex[40];
      snprintf(hex, sizeof hex, "%032lx", (unsigned long)i + (unsigned long)time(NULL) * 1000000UL);
      memcpy(slot, hex, 32);
    }
    amqp_bytes_t b = {len, body};
    if (amqp_basic_publish(c, 1, amqp_cstring_bytes("nova"), amqp_cstring_bytes(key), 0, 0, &p, b) != AMQP_STATUS_OK) {
      fprintf(stderr, "amqp_tool: publish failed at %ld\n", i);
      return 1;
    }
  }
  /* A round trip so every publish has reached the broker before we exit. */
  amqp_queue_declare(c, 1, amqp_cstring_bytes(key), 1, 0, 0, 0, amqp_empty_table);
  die("queue.declare (passive)", amqp_get_rpc_reply(c));
  amqp_channel_close(c, 1, AMQP_REPLY_SUCCESS);
  amqp_connection_close(c, AMQP_REPLY_SUCCESS);
  amqp_destroy_connection(c);
  return 0;
}

static int drain(const char *queue, long count, int prefetch) {
  amqp_connection_state_t c = connect_broker();
  amqp_basic_qos(c, 1, 0, (uint16_t)prefetch, 0);
  die("basic.qos", amqp_get_rpc_reply(c));
  amqp_basic_consume(c, 1, amqp_cstring_bytes(queue), amqp_empty_bytes, 0, 0, 0, amqp_empty_table);
  die("basic.consume", amqp_get_rpc_reply(c));
  double start = 0;
  long n = 0;
  while (n < count) {
    amqp_envelope_t e;
    amqp_maybe_release_buffers(c);
    amqp_rpc_reply_t r = amqp_consume_message(c, &e, NULL, 0);
    die("consume", r);
    if (n == 0) start = now();
    amqp_basic_ack(c, 1, e.delivery_tag, 0);
    amqp_destroy_envelope(&e);
    n++;
  }
  double secs = now() - start;
  printf("{\"messages\": %ld, \"seconds\": %.6f, \"per_s\": %.1f}\n", n, secs, n / secs);
  amqp_connection_close(c, AMQP_REPLY_SUCCESS);
  amqp_destroy_connection(c);
  return 0;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static int rtt(long count) {
  amqp_connection_state_t c = connect_broker();
  amqp_queue_declare_ok_t *q = amqp_queue_declare(c, 1, amqp_empty_bytes, 0, 0, 1, 1, amqp_empty_table);
  die("queue.declare", amqp_get_rpc_reply(c));
  amqp_bytes_t name = amqp_bytes_malloc_dup(q->queue);
  amqp_basic_consume(c, 1, name, amqp_empty_bytes, 0, 1, 0, amqp_empty_table);
  die("basic.consume", amqp_get_rpc_reply(c));
  double *ms = malloc(sizeof(double) * (size_t)count);
  for (long i = -100; i < count; i++) {
    double t = now();
    amqp_basic_publish(c, 1, amqp_empty_bytes, name, 0, 0, NULL, amqp_cstring_bytes("{\"ping\": 1}"));
    amqp_envelope_t e;
    amqp_maybe_release_buffers(c);
    die("consume", amqp_consume_message(c, &e, NULL, 0));
    amqp_destroy_envelope(&e);
    if (i >= 0) ms[i] = (now() - t) * 1000;
  }
  qsort(ms, (size_t)count, sizeof(double), cmp_double);
  printf("{\"count\": %ld, \"p50_ms\": %.4f, \"p99_ms\": %.4f}\n", count, ms[count / 2], ms[(long)(count * 0.99)]);
  return 0;
}

int main(int argc, char **argv) {
  if (argc == 3 && strcmp(argv[1], "rtt") == 0) return rtt(atol(argv[2]));
  if (argc == 5 && strcmp(argv[1], "publish") == 0) return publish(argv[2], atol(argv[3]), argv[4]);
  if (argc == 5 && strcmp(argv[1], "drain") == 0) return drain(argv[2], atol(argv[3]), atoi(argv[4]));
  fprintf(stderr, "usage: amqp_tool publish <routing_key> <count> <template_file>\n"
                  "       amqp_tool drain <queue> <count> <prefetch>\n"
                  "       amqp_tool rtt <count>\n");
  return 2;
}
