#include "rabbitmq_shim.h"

#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <amqp_framing.h>

static amqp_bytes_t bytes_of(const char *s) {
  amqp_bytes_t b;
  b.len = s ? strlen(s) : 0;
  b.bytes = (void *)s;
  return b;
}

void ca_amqp_describe_reply(amqp_rpc_reply_t r, const char *context, char *err,
                            size_t err_len) {
  if (!err || err_len == 0) return;
  switch (r.reply_type) {
  case AMQP_RESPONSE_NORMAL:
    snprintf(err, err_len, "%s: ok", context);
    break;
  case AMQP_RESPONSE_NONE:
    snprintf(err, err_len, "%s: missing RPC reply type", context);
    break;
  case AMQP_RESPONSE_LIBRARY_EXCEPTION:
    snprintf(err, err_len, "%s: %s", context, amqp_error_string2(r.library_error));
    break;
  case AMQP_RESPONSE_SERVER_EXCEPTION:
    if (r.reply.id == AMQP_CONNECTION_CLOSE_METHOD) {
      amqp_connection_close_t *m = (amqp_connection_close_t *)r.reply.decoded;
      snprintf(err, err_len, "%s: server closed connection: %u %.*s", context,
               m->reply_code, (int)m->reply_text.len, (char *)m->reply_text.bytes);
    } else if (r.reply.id == AMQP_CHANNEL_CLOSE_METHOD) {
      amqp_channel_close_t *m = (amqp_channel_close_t *)r.reply.decoded;
      snprintf(err, err_len, "%s: server closed channel: %u %.*s", context,
               m->reply_code, (int)m->reply_text.len, (char *)m->reply_text.bytes);
    } else {
      snprintf(err, err_len, "%s: unexpected server method 0x%08X", context, r.reply.id);
    }
    break;
  }
}

static int check(amqp_connection_state_t conn, const char *context, char *err,
                 size_t err_len) {
  amqp_rpc_reply_t r = amqp_get_rpc_reply(conn);
  if (r.reply_type == AMQP_RESPONSE_NORMAL) return 0;
  ca_amqp_describe_reply(r, context, err, err_len);
  return -1;
}

int ca_amqp_login(amqp_connection_state_t conn, const char *vhost, int channel_max,
                  int frame_max, int heartbeat, const char *user, const char *password,
                  const char *connection_name, char *err, size_t err_len) {
  amqp_table_entry_t entries[2];
  entries[0].key = amqp_cstring_bytes("product");
  entries[0].value.kind = AMQP_FIELD_KIND_UTF8;
  entries[0].value.value.bytes = amqp_cstring_bytes("compute-agent");
  entries[1].key = amqp_cstring_bytes("connection_name");
  entries[1].value.kind = AMQP_FIELD_KIND_UTF8;
  entries[1].value.value.bytes = bytes_of(connection_name ? connection_name : "compute-agent");
  amqp_table_t props = {2, entries};
  amqp_rpc_reply_t r = amqp_login_with_properties(conn, vhost, channel_max, frame_max,
                                                  heartbeat, &props, AMQP_SASL_METHOD_PLAIN,
                                                  user, password);
  if (r.reply_type == AMQP_RESPONSE_NORMAL) return 0;
  if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION &&
      r.library_error == AMQP_STATUS_CONNECTION_CLOSED) {
    snprintf(err, err_len, "login refused by the broker (check user, password and vhost)");
    return -1;
  }
  ca_amqp_describe_reply(r, "login", err, err_len);
  return -1;
}

int ca_amqp_exchange_declare(amqp_connection_state_t conn, amqp_channel_t channel,
                             const char *name, const char *type, int durable,
                             int auto_delete, char *err, size_t err_len) {
  amqp_exchange_declare(conn, channel, bytes_of(name), bytes_of(type), 0, durable ? 1 : 0,
                        auto_delete ? 1 : 0, 0, amqp_empty_table);
  char ctx[300];
  snprintf(ctx, sizeof ctx, "declare exchange '%s'", name);
  return check(conn, ctx, err, err_len);
}

int ca_amqp_queue_declare(amqp_connection_state_t conn, amqp_channel_t channel,
                          const char *name, int durable, int exclusive, int auto_delete,
                          int64_t x_expires_ms, int quorum, uint32_t *consumer_count,
                          char *err, size_t err_len) {
  amqp_table_entry_t entries[2];
  int n = 0;
  if (x_expires_ms > 0) {
    entries[n].key = amqp_cstring_bytes("x-expires");
    entries[n].value.kind = AMQP_FIELD_KIND_I64;
    entries[n].value.value.i64 = x_expires_ms;
    n++;
  }
  if (quorum) {
    entries[n].key = amqp_cstring_bytes("x-queue-type");
    entries[n].value.kind = AMQP_FIELD_KIND_UTF8;
    entries[n].value.value.bytes = amqp_cstring_bytes("quorum");
    n++;
  }
  amqp_table_t args = {n, n ? entries : NULL};
  amqp_queue_declare_ok_t *ok = amqp_queue_declare(
      conn, channel, bytes_of(name), 0, durable ? 1 : 0, exclusive ? 1 : 0, auto_delete ? 1 : 0, args);
  char ctx[300];
  snprintf(ctx, sizeof ctx, "declare queue '%s'", name);
  int rc = check(conn, ctx, err, err_len);
  if (rc == 0 && consumer_count) *consumer_count = ok ? ok->consumer_count : 0;
  return rc;
}

int ca_amqp_queue_bind(amqp_connection_state_t conn, amqp_channel_t channel,
                       const char *queue, const char *exchange, const char *routing_key,
                       char *err, size_t err_len) {
  amqp_queue_bind(conn, channel, bytes_of(queue), bytes_of(exchange), bytes_of(routing_key),
                  amqp_empty_table);
  char ctx[300];
  snprintf(ctx, sizeof ctx, "bind queue '%s' to '%s'", queue, exchange);
  return check(conn, ctx, err, err_len);
}

int ca_amqp_queue_delete(amqp_connection_state_t conn, amqp_channel_t channel,
                         const char *queue, char *err, size_t err_len) {
  amqp_queue_delete(conn, channel, bytes_of(queue), 0, 0);
  char ctx[300];
  snprintf(ctx, sizeof ctx, "delete queue '%s'", queue);
  return check(conn, ctx, err, err_len);
}

int ca_amqp_basic_qos(amqp_connection_state_t conn, amqp_channel_t channel,
                      uint16_t prefetch_count, char *err, size_t err_len) {
  amqp_basic_qos(conn, channel, 0, prefetch_count, 0);
  return check(conn, "basic.qos", err, err_len);
}

int ca_amqp_basic_consume(amqp_connection_state_t conn, amqp_channel_t channel,
                          const char *queue, const char *consumer_tag, char *err,
                          size_t err_len) {
  amqp_basic_consume(conn, channel, bytes_of(queue), bytes_of(consumer_tag), 0, 0, 0,
                     amqp_empty_table);
  char ctx[300];
  snprintf(ctx, sizeof ctx, "consume from '%s'", queue);
  return check(conn, ctx, err, err_len);
}

int ca_amqp_publish_json(amqp_connection_state_t conn, amqp_channel_t channel,
                         const char *exchange, const char *routing_key, int mandatory,
                         const void *body, size_t body_len, const char *expiration,
                         char *err, size_t err_len) {
  amqp_basic_properties_t props;
  memset(&props, 0, sizeof props);
  props._flags = AMQP_BASIC_CONTENT_TYPE_FLAG | AMQP_BASIC_CONTENT_ENCODING_FLAG |
                 AMQP_BASIC_DELIVERY_MODE_FLAG | AMQP_BASIC_PRIORITY_FLAG |
                 AMQP_BASIC_HEADERS_FLAG;
  props.content_type = amqp_cstring_bytes("application/json");
  props.content_encoding = amqp_cstring_bytes("utf-8");
  props.delivery_mode = 2;
  props.priority = 0;
  props.headers = amqp_empty_table;
  if (expiration) {
    props._flags |= AMQP_BASIC_EXPIRATION_FLAG;
    props.expiration = bytes_of(expiration);
  }
  amqp_bytes_t b;
  b.len = body_len;
  b.bytes = (void *)body;
  int rc = amqp_basic_publish(conn, channel, bytes_of(exchange), bytes_of(routing_key),
                              mandatory ? 1 : 0, 0, &props, b);
  if (rc != AMQP_STATUS_OK) {
    snprintf(err, err_len, "publish to '%s' key '%s': %s", exchange, routing_key,
             amqp_error_string2(rc));
    return -1;
  }
  return 0;
}

int ca_amqp_confirm_select(amqp_connection_state_t conn, amqp_channel_t channel, char *err,
                           size_t err_len) {
  amqp_confirm_select(conn, channel);
  return check(conn, "confirm.select", err, err_len);
}

uint32_t ca_amqp_method_basic_deliver(void) { return AMQP_BASIC_DELIVER_METHOD; }
uint32_t ca_amqp_method_basic_return(void) { return AMQP_BASIC_RETURN_METHOD; }
uint32_t ca_amqp_method_basic_ack(void) { return AMQP_BASIC_ACK_METHOD; }
uint32_t ca_amqp_method_basic_nack(void) { return AMQP_BASIC_NACK_METHOD; }
uint32_t ca_amqp_method_channel_close(void) { return AMQP_CHANNEL_CLOSE_METHOD; }
uint32_t ca_amqp_method_connection_close(void) { return AMQP_CONNECTION_CLOSE_METHOD; }
uint8_t ca_amqp_frame_method(void) { return AMQP_FRAME_METHOD; }
uint8_t ca_amqp_frame_heartbeat(void) { return AMQP_FRAME_HEARTBEAT; }
