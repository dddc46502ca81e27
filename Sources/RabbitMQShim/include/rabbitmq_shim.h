/* C glue over librabbitmq for the Messaging module.
 *
 * Swift cannot call C variadic functions (amqp_login_with_properties), and building
 * amqp_table_t / amqp_basic_properties_t values with borrowed byte pointers from Swift
 * is error-prone. These helpers take plain NUL-terminated strings, build the AMQP
 * structures on their own stack, and report failures as text in a caller buffer.
 */
#pragma once
#include <stddef.h>
#include <stdint.h>
#include <amqp.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Logs in with SASL PLAIN and the given tuning. Returns 0, or -1 with `err` filled.
 * The password is never copied into `err`. */
int ca_amqp_login(amqp_connection_state_t conn, const char *vhost, int channel_max,
                  int frame_max, int heartbeat, const char *user, const char *password,
                  const char *connection_name, char *err, size_t err_len);

/* Declares an exchange with oslo.messaging's flags (passive=false, internal=false). */
int ca_amqp_exchange_declare(amqp_connection_state_t conn, amqp_channel_t channel,
                             const char *name, const char *type, int durable,
                             int auto_delete, char *err, size_t err_len);

/* Declares a queue. `x_expires_ms` > 0 adds the x-expires argument; `quorum` != 0 adds
 * x-queue-type=quorum. `consumer_count` (may be NULL) receives the broker's count of
 * consumers already on the queue. */
int ca_amqp_queue_declare(amqp_connection_state_t conn, amqp_channel_t channel,
                          const char *name, int durable, int exclusive, int auto_delete,
                          int64_t x_expires_ms, int quorum, uint32_t *consumer_count,
                          char *err, size_t err_len);

int ca_amqp_queue_bind(amqp_connection_state_t conn, amqp_channel_t channel,
                       const char *queue, const char *exchange, const char *routing_key,
                       char *err, size_t err_len);

int ca_amqp_queue_delete(amqp_connection_state_t conn, amqp_channel_t channel,
                         const char *queue, char *err, size_t err_len);

int ca_amqp_basic_qos(amqp_connection_state_t conn, amqp_channel_t channel,
                      uint16_t prefetch_count, char *err, size_t err_len);

int ca_amqp_basic_consume(amqp_connection_state_t conn, amqp_channel_t channel,
                          const char *queue, const char *consumer_tag, char *err,
                          size_t err_len);

/* Publishes a JSON body with exactly the properties oslo.messaging's rabbit driver sets:
 * content_type application/json, content_encoding utf-8, delivery_mode 2, priority 0,
 * empty headers, plus `expiration` (milliseconds as text) when not NULL. */
int ca_amqp_publish_json(amqp_connection_state_t conn, amqp_channel_t channel,
                         const char *exchange, const char *routing_key, int mandatory,
                         const void *body, size_t body_len, const char *expiration,
                         char *err, size_t err_len);

/* Puts the channel in publisher-confirm mode (confirm.select). */
int ca_amqp_confirm_select(amqp_connection_state_t conn, amqp_channel_t channel, char *err,
                           size_t err_len);

/* Describes a non-normal amqp_rpc_reply_t as text. */
void ca_amqp_describe_reply(amqp_rpc_reply_t reply, const char *context, char *err,
                            size_t err_len);

/* Constants that Swift cannot import as macros. */
uint32_t ca_amqp_method_basic_deliver(void);
uint32_t ca_amqp_method_basic_return(void);
uint32_t ca_amqp_method_basic_ack(void);
uint32_t ca_amqp_method_basic_nack(void);
uint32_t ca_amqp_method_channel_close(void);
uint32_t ca_amqp_method_connection_close(void);
uint8_t ca_amqp_frame_method(void);
uint8_t ca_amqp_frame_heartbeat(void);

#ifdef __cplusplus
}
#endif
