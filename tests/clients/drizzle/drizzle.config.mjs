export default {
  dialect: "turso",
  schema: process.env.SCHEMA,
  dbCredentials: { url: process.env.DB_URL, authToken: process.env.DB_TOKEN },
};
