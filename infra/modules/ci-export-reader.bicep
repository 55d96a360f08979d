// Read-only access for the app identity to ONE container in an existing storage account (the one Customer Insights
// exports into). Deployed into that account's resource group by main.bicep; nothing in the account is changed.
// The account's own settings stay as they are: in particular, keep blob soft delete OFF there (CI exports fail with it).
targetScope = 'resourceGroup'

@description('Existing storage account that holds the Customer Insights export container.')
param storageAccountName string

@description('Existing container Customer Insights exports into.')
param containerName string

@description('Object (principal) id of the app\'s user-assigned managed identity.')
param principalId string

// Storage Blob Data Reader: list and read blobs, nothing else; the app never writes into Customer Insights' container.
var storageBlobDataReaderRoleId = '2a2b9908-6ea1-4ae2-8e65-a410df84e7d1'

resource account 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' existing = {
  parent: account
  name: 'default'
}

resource container 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' existing = {
  parent: blobService
  name: containerName
}

resource storageBlobDataReader 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(container.id, principalId, storageBlobDataReaderRoleId)
  scope: container
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataReaderRoleId)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}
